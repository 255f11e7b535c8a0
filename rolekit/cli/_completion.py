"""``rolekit completion bash|zsh``: a shell completion script generated from the parser.

The script knows what the parser knows, nothing more: the commands, each
command's options, the values of options and positionals that have choices
(``--format``, the rotation phase), and files for ``--config`` and
``--output``. It never runs rolekit, so completing reads no project and no
secret. zsh runs the bash script through its ``bashcompinit``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable
from typing import Any

import rolekit
from rolekit.cli._rotate import PHASE_OPTIONS

SHELLS = ("bash", "zsh")

#: options whose value is a path: the shell completes file names
_FILE_DESTS = frozenset({"config", "output"})
#: what the script may hold unquoted: option strings, command names, choices
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]*|-{1,2}[A-Za-z0-9][A-Za-z0-9-]*")

HELP = """\
Install for bash (bash-completion loads it the first time rolekit is completed):
  rolekit completion bash > ~/.local/share/bash-completion/completions/rolekit
or add to ~/.bashrc:   source <(rolekit completion bash)
zsh, in ~/.zshrc after compinit:   source <(rolekit completion zsh)
The script completes commands, options (after 'rotate FAMILY PHASE' only that
phase's), the rotation phase, the values of --format and --publish-format, and
file names for --config and --output.
It is generated from this version's parser: generate it again after an upgrade."""


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], root: argparse.ArgumentParser
) -> None:
    """Add ``completion SHELL`` to *sub*, completing *root* (read when it runs)."""

    def run(args: argparse.Namespace, out: Any) -> int:
        print(script(root, args.shell), end="")
        return 0

    parser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="print a shell completion script (bash or zsh).\n\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(fn=run, json=False)


def _commands(root: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(words: Iterable[Any]) -> str:
    out = [str(w) for w in words]
    bad = [w for w in out if not _TOKEN.fullmatch(w)]
    if bad:  # never a shell metacharacter in the generated script
        raise ValueError(f"not a plain completion word: {bad!r}")
    return " ".join(out)


def _cases(rows: Iterable[tuple[str, str]]) -> str:
    return "".join(f'        "{key}") echo "{value}" ;;\n' for key, value in rows)


def _option_rows(name: str, parser: argparse.ArgumentParser) -> Iterable[tuple[str, str]]:
    """(``command``, its options), and for ``rotate`` (``rotate PHASE``, the phase's
    options) once the phase is typed: another phase's options are refused."""
    if name == "rotate":
        for phase, mine in PHASE_OPTIONS.items():
            others = {d for dests in PHASE_OPTIONS.values() for d in dests} - set(mine)
            kept = (o for a in parser._actions if a.dest not in others for o in a.option_strings)
            yield f"{name} {phase}", _words(kept)
    yield f"{name} ", _words(o for a in parser._actions for o in a.option_strings)


def _value_rows(name: str, parser: argparse.ArgumentParser) -> Iterable[tuple[str, str]]:
    """(``command option``, its values) for each option that takes a value."""
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        if action.choices is not None:
            values = _words(action.choices)
        elif action.dest in _FILE_DESTS:
            values = "@files"
        else:
            values = ""  # takes a value; nothing to offer
        for option in action.option_strings:
            yield f"{name} {_words([option])}", values


def _positional_rows(name: str, parser: argparse.ArgumentParser) -> Iterable[tuple[str, str]]:
    """(``command index``, its choices) for each positional that has choices."""
    positionals = [a for a in parser._actions if not a.option_strings]
    for index, action in enumerate(positionals):
        if action.choices is not None:
            yield f"{name} {index}", _words(action.choices)


def _bash(root: argparse.ArgumentParser) -> str:
    commands = _commands(root)
    options: list[tuple[str, str]] = [
        (" ", _words(o for a in root._actions for o in a.option_strings))
    ]
    values: list[tuple[str, str]] = []
    positionals: list[tuple[str, str]] = []
    for name, parser in commands.items():
        options.extend(_option_rows(name, parser))
        values.extend(_value_rows(name, parser))
        positionals.extend(_positional_rows(name, parser))
    return _BASH.format(
        version=rolekit.__version__,
        commands=_words(commands),
        options=_cases(options),
        values=_cases(values),
        positionals=_cases(positionals),
    )


def _zsh(root: argparse.ArgumentParser) -> str:
    return _ZSH.format(version=rolekit.__version__) + _bash(root)


_RENDER: dict[str, Callable[[argparse.ArgumentParser], str]] = {"bash": _bash, "zsh": _zsh}


def script(root: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of *root* for *shell* (one of :data:`SHELLS`)."""
    return _RENDER[shell](root)


_ZSH = """\
# zsh completion for rolekit {version}, generated by `rolekit completion zsh`:
# the bash completion below, run by zsh's bashcompinit. In ~/.zshrc, after
# compinit:  source <(rolekit completion zsh)
autoload -U +X bashcompinit && bashcompinit
"""

_BASH = """\
# bash completion for rolekit {version}, generated by `rolekit completion bash`
# from rolekit's argument parser; generate it again after upgrading rolekit.

_rolekit_options() {{  # $1: the command ("" before one), $2: its second positional
    case "$1 $2" in
{options}    esac
}}

_rolekit_values() {{  # "$1 $2": command and option; fails when the option takes no value
    case "$1 $2" in
{values}        *) return 1 ;;
    esac
}}

_rolekit_positional() {{  # "$1 $2": command and the index of a positional
    case "$1 $2" in
{positionals}    esac
}}

_rolekit() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local cmd="" npos=0 skip=0 i word values second=""
    COMPREPLY=()
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word=${{COMP_WORDS[i]}}
        if [[ $word == "=" ]]; then skip=1; continue; fi  # --option=value
        if (( skip )); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            _rolekit_values "$cmd" "$word" >/dev/null && skip=1
            continue
        fi
        if [[ -z $cmd ]]; then cmd=$word; continue; fi
        if (( npos == 1 )); then second=$word; fi  # rotate's phase
        npos=$(( npos + 1 ))
    done
    if [[ $prev == "=" && COMP_CWORD -ge 2 ]]; then prev=${{COMP_WORDS[COMP_CWORD-2]}}; fi
    # plain arrays, not mapfile: zsh runs this too (bashcompinit, sh emulation)
    if values=$(_rolekit_values "$cmd" "$prev"); then
        if [[ $values == @files ]]; then
            compopt -o filenames 2>/dev/null  # bash; zsh has no compopt
            local IFS=$'\\n'  # a file name may hold spaces
            COMPREPLY=( $(compgen -f -- "$cur") )
        else
            COMPREPLY=( $(compgen -W "$values" -- "$cur") )
        fi
    elif [[ $cur == -* ]]; then
        values=$(_rolekit_options "$cmd" "$second")
        [[ -n $values ]] || values=$(_rolekit_options "$cmd" "")
        COMPREPLY=( $(compgen -W "$values" -- "$cur") )
    elif [[ -z $cmd ]]; then
        COMPREPLY=( $(compgen -W "{commands}" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$(_rolekit_positional "$cmd" "$npos")" -- "$cur") )
    fi
    return 0
}}

complete -F _rolekit rolekit
"""
