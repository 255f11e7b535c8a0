"""``rolekit completion bash|zsh``: the generated script completes what the parser accepts.

bash runs the script as it would at a prompt (``COMP_WORDS``/``COMP_CWORD``
set, ``_rolekit`` called); zsh runs it through ``bashcompinit`` in sh
emulation, as zsh's ``compgen -F`` does (zsh filters the candidates itself,
so its lists are not narrowed by the word being completed).  No server.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from rolekit.cli import _completion, _parser, main
from rolekit.cli._rotate import PHASE_OPTIONS
from rolekit.rotation.creds_formats import FORMATS

_BASH_CALL = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
_rolekit
printf '%s\\n' "${COMPREPLY[@]}"
"""

_ZSH_CALL = """
autoload -U compinit && compinit -u -D
autoload -U +X bashcompinit && bashcompinit
source "$1"; shift
print -r -- "registered: ${_comps[rolekit]}"
complete_words() {
  emulate -L sh
  COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
  _rolekit
  printf '%s\\n' "${COMPREPLY[@]}"
}
complete_words "$@"
"""


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("completion")
    found = {}
    for shell in _completion.SHELLS:
        found[shell] = folder / f"rolekit.{shell}"
        found[shell].write_text(_completion.script(_parser(), shell))
    return found


def _bash(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", _BASH_CALL, "bash", str(script), *words],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    )
    assert out.stderr == ""
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["rolekit", "ro"], ["rotate"]),
        (["rolekit", "rotate", "my_app", ""], ["begin", "finish", "auto"]),
        # the value of --context is not the family: the phase is still next
        (["rolekit", "rotate", "--context", "prod", "my_app", "f"], ["finish"]),
        (["rolekit", "rotate", "my_app", "finish", "--dr"], ["--drain-timeout"]),
        # once the phase is typed, only its options: another phase's are refused
        (["rolekit", "rotate", "my_app", "begin", "--dr"], []),
        (["rolekit", "rotate", "my_app", "auto", "--publish-f"], ["--publish-format"]),
        (["rolekit", "rotate", "my_app", "finish", "--publish"], []),
        (["rolekit", "rotate", "--context", "prod", "my_app", "finish", "--q"], ["--quiet-period"]),
        (["rolekit", "creds", "my_app", "--format", ""], list(FORMATS)),
        (["rolekit", "creds", "my_app", "--format", "=", "k"], ["k8s-secret"]),
        (["rolekit", "rotate", "my_app", "auto", "--publish-format", "p"], ["pgpass", "pgbouncer"]),
        (["rolekit", "-"], ["-h", "--help", "--version"]),
        (["rolekit", "completion", ""], ["bash", "zsh"]),
        # a family name or a context is the user's: nothing to offer
        (["rolekit", "creds", ""], []),
        (["rolekit", "status", "--context", ""], []),
    ],
)
def test_bash_completes_commands_options_and_choices(
    scripts: dict[str, Path], words: list[str], expected: list[str]
) -> None:
    assert _bash(scripts["bash"], *words) == expected


def test_bash_completes_file_names_for_config_and_output(
    scripts: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "alembic.ini").touch()
    (tmp_path / "a file with spaces.json").touch()
    script = scripts["bash"]
    assert _bash(script, "rolekit", "plan", "-c", "al", cwd=tmp_path) == ["alembic.ini"]
    assert sorted(_bash(script, "rolekit", "creds", "x", "--output", "a", cwd=tmp_path)) == [
        "a file with spaces.json",
        "alembic.ini",
    ]


def test_every_command_and_option_of_the_parser_is_in_the_script(
    scripts: dict[str, Path],
) -> None:
    root = _parser()
    (sub,) = (a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    assert _bash(scripts["bash"], "rolekit", "") == list(sub.choices)
    for name, parser in sub.choices.items():
        options = [o for a in parser._actions for o in a.option_strings]
        assert _bash(scripts["bash"], "rolekit", name, "-") == options, name


def test_rotate_completes_each_phase_with_the_options_it_accepts(
    scripts: dict[str, Path],
) -> None:
    """What completes after ``rotate my_app PHASE`` is what that phase parses without
    refusing (exit 2 for another phase's options)."""
    for phase, dests in PHASE_OPTIONS.items():
        offered = _bash(scripts["bash"], "rolekit", "rotate", "my_app", phase, "--")
        own = {"--" + d.replace("_", "-") for d in dests}
        others = {"--" + d.replace("_", "-") for ds in PHASE_OPTIONS.values() for d in ds} - own
        assert own <= set(offered) and not others & set(offered), phase
        assert {"--apply", "--context", "--config", "--json"} <= set(offered)


def test_zsh_runs_the_bash_completion_through_bashcompinit(scripts: dict[str, Path]) -> None:
    def run(*words: str) -> list[str]:
        out = subprocess.run(
            ["zsh", "-f", "-c", _ZSH_CALL, "zsh", str(scripts["zsh"]), *words],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stderr == ""
        lines = [line for line in out.stdout.splitlines() if line]
        assert lines[0] == "registered: _bash_complete -F _rolekit"
        return lines[1:]

    assert run("rolekit", "rotate", "--context", "prod", "my_app", "") == [
        "begin",
        "finish",
        "auto",
    ]
    assert run("rolekit", "creds", "my_app", "--format", "=", "") == list(FORMATS)
    assert "clear-checksums" in run("rolekit", "")


def test_the_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    out = capsys.readouterr().out
    assert out == _completion.script(_parser(), "bash")
    assert out.rstrip().endswith("complete -F _rolekit rolekit")
    assert main(["completion", "zsh"]) == 0
    assert "bashcompinit" in capsys.readouterr().out


def test_an_unknown_shell_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "fish"])
    assert exc.value.code == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err


def test_a_word_that_is_not_plain_is_never_written_into_the_script() -> None:
    parser = argparse.ArgumentParser(prog="rolekit")
    sub = parser.add_subparsers()
    sub.add_parser("x").add_argument("--mode", choices=["ok", "$(reboot)"])
    with pytest.raises(ValueError, match="not a plain completion word"):
        _completion.script(parser, "bash")
