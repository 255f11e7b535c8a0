"""``rolekit init``: plan every file change of an Alembic project, then make them.

Planning reads only; nothing is written until every change is known, so a
conflict (a file rolekit would replace) stops the run before any write.  The
revision, which runs the project's own template and hooks, is written first:
if it fails, nothing else was written.
"""

from __future__ import annotations

import configparser
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError

from rolekit.errors import ExitCode, GuardError, RolekitError, first_line
from rolekit.project.config import Settings, alembic_config, project_ini, read_ini
from rolekit.scaffold import _content
from rolekit.scaffold._changes import (
    Action,
    FileChange,
    absent_only,
    check_inside,
    read_text,
    to_lf,
    with_lines,
)
from rolekit.scaffold._envpy import EnvPyCase, plan_env_py
from rolekit.scaffold._family import FamilySpec, repeatables_change, revision_change, state_change
from rolekit.secrets import SecretsFile, git_tracks


@dataclass
class InitReport:
    """What ``rolekit init`` found, did (or would do), and what is left to the user."""

    root: Path
    changes: list[FileChange]
    applied: bool = False
    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[FileChange]:
        return [c for c in self.changes if c.action is Action.CONFLICT and not c.forced]

    @property
    def manual(self) -> list[FileChange]:
        return [c for c in self.changes if c.action is Action.MANUAL and not c.forced]

    @property
    def exit_code(self) -> ExitCode:
        """3: a conflict stopped it (nothing written); 1: env.py needs the user; else 0."""
        if self.conflicts:
            return ExitCode.GUARD
        return ExitCode.PROBLEM if self.manual else ExitCode.OK


def _alembic_project(ini: Path) -> ScriptDirectory:
    if not ini.is_file():
        raise RolekitError(
            f"{ini} does not exist: run rolekit init in an Alembic project (alembic init "
            "migrations creates one), or name its alembic.ini with -c"
        )
    try:
        return ScriptDirectory.from_config(alembic_config(ini))
    except (CommandError, configparser.Error) as exc:
        raise RolekitError(f"{ini} is not a usable Alembic project: {first_line(exc)}") from None


def _relative(path: Path, root: Path) -> str | None:
    """*path* relative to *root*, or ``None`` when it lies outside."""
    relative = os.path.relpath(os.path.normpath(path), root)
    return None if relative.startswith("..") else relative


def _ini_change(ini: Path, script_dir: Path) -> tuple[FileChange, Settings]:
    """alembic.ini gains ``[rolekit]``; the settings are those it will have,
    read as rolekit reads them at run time (``%(here)s`` expanded).

    The paths written are relative to alembic.ini's folder, so the file means
    the same in every checkout (and in every folder that symlinks it).
    """
    ini = project_ini(ini)
    before = read_text(ini) or ""
    text = to_lf(before)
    parser = read_ini(ini, text)
    if parser.has_section("rolekit"):
        change = FileChange(ini, Action.UNCHANGED, before, None, "has a [rolekit] section")
        return change, Settings.from_parser(ini, parser)
    folder = os.path.relpath(script_dir, ini.parent)
    section = _content.rolekit_section(f"{folder}/repeatable", f"{folder}/rotation.json")
    after = _content.add_rolekit_section(text, section)
    change = FileChange(ini, Action.EDIT, before, after, "gains [rolekit] and a rolekit logger")
    return change, Settings.from_parser(ini, read_ini(ini, after))


def _git(root: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str] | None:
    """``git -C root ARGS`` (``None`` without git)."""
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _ignored_by_a_gitignore(root: Path, path: str) -> bool | None:
    """Whether a committed ``.gitignore`` makes git ignore *path*: not
    ``.git/info/exclude`` or a global excludes file, which a teammate's clone
    does not have, and not a negated rule (``!passwords.env`` after ``*.env``),
    which --verbose reports as a match.  ``None``: git cannot tell (no git, no
    repository)."""
    # -z (with --stdin) so that no file name or pattern can shift the fields
    done = _git(root, "check-ignore", "--verbose", "--no-index", "-z", "--stdin", stdin=path + "\0")
    if done is None or done.returncode not in (0, 1):
        return None
    source, _line, pattern, *_ = [*done.stdout.split("\0"), "", "", ""]
    return (
        bool(pattern)
        and not pattern.startswith("!")
        and Path(source).name == ".gitignore"
        and not Path(source).is_absolute()
    )


def _ignore_rules(root: Path, settings: Settings) -> list[str]:
    """The paths git must ignore: plaintext secrets files and rolekit's lock files."""
    secrets = sorted({settings.default_secrets_file, *settings.secrets_files.values()})
    paths = [p for p in secrets if not SecretsFile(p).encrypted]  # age and SOPS: committed
    paths += [p.with_name(p.name + ".lock") for p in secrets]
    # the state file's own lock and one per family (rotation.json.my_app.lock)
    paths.append(settings.state_file.with_name(settings.state_file.name + "*.lock"))
    return [rel for p in paths if (rel := _relative(p, root)) is not None]


def _gitignore_change(root: Path, settings: Settings) -> FileChange:
    path = root / ".gitignore"
    what = "keeps secrets and lock files out of git"
    if path.is_symlink():
        return FileChange(
            path,
            Action.MANUAL,
            read_text(path),
            None,
            f"{what}: is a symlink, which git does not read, so no rule in it keeps a secret out "
            "of git: replace it with a file, then run rolekit init again",
        )
    present = {line.strip().lstrip("/") for line in (read_text(path) or "").splitlines()}

    def ignored(rule: str) -> bool:
        # git's answer when it has one: a line present may be negated by a later one
        answer = _ignored_by_a_gitignore(root, rule)
        return rule in present if answer is None else answer

    missing = [f"{rule}\n" for rule in _ignore_rules(root, settings) if not ignored(rule)]
    header = "# rolekit: plaintext secrets files and rolekit's lock files\n"
    if missing and read_text(path):
        missing.insert(0, header)
    return with_lines(path, missing, header, what)


def _example_change(root: Path, family: FamilySpec | None) -> FileChange:
    path = root / "passwords.env.example"
    present = read_text(path) or ""
    keys = {line.split("=", 1)[0].strip() for line in present.splitlines() if "=" in line}
    lines = _content.example_lines(family.members, family.contexts) if family else []
    missing = [line for line in lines if line.split("=", 1)[0] not in keys]
    if not present and not missing:
        return FileChange(path, Action.CREATE, None, _content.EXAMPLE_HEADER, "the secrets' keys")
    return with_lines(path, missing, _content.EXAMPLE_HEADER, "the secrets' keys")


def _env_change(script_dir: Path) -> FileChange:
    path = script_dir / "env.py"
    text = read_text(path)
    if text is None:
        raise RolekitError(f"{path} does not exist: the Alembic project has no env.py")
    plan = plan_env_py(to_lf(text))
    action = {
        EnvPyCase.INTEGRATED: Action.UNCHANGED,
        EnvPyCase.STOCK: Action.EDIT,
        EnvPyCase.PATCHABLE: Action.MANUAL,
        EnvPyCase.MANUAL: Action.MANUAL,
    }[plan.case]
    return FileChange(path, action, text, plan.new_text, plan.note)


def plan_init(
    config: str | os.PathLike[str] = "alembic.ini",
    *,
    family: FamilySpec | None = None,
    force: bool = False,
) -> InitReport:
    """Every change ``rolekit init`` would make to the project of *config*; writes nothing."""
    ini = Path(config)
    script = _alembic_project(ini)
    script_dir = Path(script.dir)
    ini_change, settings = _ini_change(ini, script_dir)
    root = settings.root
    changes = []
    if family is not None:  # first: if Alembic fails to write it, nothing else is written
        changes.append(revision_change(script, family))
    changes += [
        _env_change(script_dir),
        ini_change,
        absent_only(
            settings.repeatables_dir / "README.md",
            _content.REPEATABLES_README,
            "the repeatables folder",
        ),
        state_change(settings, family),
        _gitignore_change(root, settings),
        _example_change(root, family),
    ]
    if family is not None:
        changes.append(repeatables_change(settings, family))
    if force:
        changes = [change.allow() for change in changes]
    _refuse_writes_outside(changes, root)
    report = InitReport(root, changes)
    secrets = settings.default_secrets_file
    if git_tracks(secrets):
        report.warnings.append(
            f"{secrets.name} is committed to git: remove it from the index (git rm --cached "
            f"{secrets.name}) and treat its passwords as leaked (rotate them)"
        )
    report.next_steps = _next_steps(report, family, str(config))
    return report


def _refuse_writes_outside(changes: list[FileChange], root: Path) -> None:
    """Refuse the run, before any write, when a file it would change (or show
    a diff of) leads outside the project: the project's symlinks and
    ``[rolekit]`` settings are the repository's, not the user's."""
    problems = []
    for change in changes:
        if change.action is Action.UNCHANGED:
            continue  # neither written nor shown
        try:
            check_inside(change.path, root)
        except GuardError as exc:
            problems.append(str(exc))
    if problems:
        raise GuardError(
            "refusing to write outside the project; nothing was written:\n  "
            + "\n  ".join(problems)
            + "\nreplace each link with a file (or the setting with a path in the project), "
            "or make the change by hand"
        )


def init_project(
    config: str | os.PathLike[str] = "alembic.ini",
    *,
    family: FamilySpec | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> InitReport:
    """Add what rolekit needs to an Alembic project (see :func:`plan_init`).

    Nothing is written when a file would be replaced without *force*: the
    report's conflicts carry the diffs to show.
    """
    report = plan_init(config, family=family, force=force)
    if dry_run or report.conflicts:
        return report
    for index, change in enumerate(report.changes):
        if change.writes:
            written = change.apply(report.root)
            report.changes[index] = replace(change, path=written)
            report.written.append(written)
    report.applied = True
    return report


def _next_steps(report: InitReport, family: FamilySpec | None, config: str) -> list[str]:
    steps = [f"edit {os.path.relpath(c.path, report.root)} as shown above" for c in report.manual]
    with_config = "" if config == "alembic.ini" else f" -c {config}"
    if family is None:
        return [
            *steps,
            f"declare a role family: rolekit init{with_config} --family my_app "
            "--members my_app_tom,my_app_jerry",
        ]
    context, first = family.contexts[0], family.members[0]
    return [
        *steps,
        f"rolekit gen-password{with_config} {first} --context {context} --write",
        f"alembic{with_config} -x context={context} upgrade head",
        f"rolekit status{with_config} --context {context}",
        f"rolekit rotate{with_config} {family.name} auto --context {context} --max-age 90d "
        "--apply   # from cron: see the README",
    ]
