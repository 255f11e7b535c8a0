"""``rolekit init``: plan every file change of an Alembic project, then make them.

Planning reads only; nothing is written until every change is known, so a
conflict (a file rolekit would replace) stops the run before any write.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError, rev_id

from rolekit._names import check_role_name
from rolekit.contexts import check_context_name
from rolekit.errors import ExitCode, RolekitError
from rolekit.rotation.state import FamilyState, RotationState
from rolekit.runtime.config import Settings, alembic_config
from rolekit.scaffold import _content
from rolekit.scaffold._changes import Action, FileChange, read_text, whole_file, with_lines
from rolekit.scaffold._envpy import EnvPyCase, plan_env_py

#: the contexts ``init --family`` declares when none are given
DEFAULT_CONTEXTS = ("dev", "prod")


@dataclass(frozen=True)
class FamilySpec:
    """``--family NAME --members A,B --contexts dev,prod``, checked."""

    name: str
    members: tuple[str, str]
    contexts: tuple[str, ...]

    @classmethod
    def parse(cls, name: str, members: Sequence[str], contexts: Sequence[str]) -> FamilySpec:
        check_role_name(name, what="family name")
        checked = [check_role_name(m, what="member name") for m in members]
        if len(checked) != 2 or checked[0] == checked[1] or name in checked:
            raise RolekitError(
                f"--members needs two different roles other than the family {name!r}, "
                f"got {', '.join(checked) or 'none'}"
            )
        names = [check_context_name(c) for c in contexts]
        if not names or len(set(names)) != len(names):
            raise RolekitError("--contexts needs one or more different context names")
        return cls(name, (checked[0], checked[1]), tuple(names))


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
        return [c for c in self.changes if c.action is Action.MANUAL]

    @property
    def pending(self) -> list[FileChange]:
        return [c for c in self.changes if c.writes]

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
    config = alembic_config(ini)
    try:
        return ScriptDirectory.from_config(config)
    except CommandError as exc:
        raise RolekitError(f"{ini} is not a usable Alembic project: {exc}") from None


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def _ini_change(ini: Path, script_dir: Path) -> tuple[FileChange, Settings]:
    """alembic.ini gains ``[rolekit]``; the settings are those it will have."""
    text = read_text(ini) or ""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text, source=str(ini))
    if parser.has_section("rolekit"):
        change = FileChange(ini, Action.UNCHANGED, text, None, "has a [rolekit] section")
        return change, Settings.from_parser(ini.resolve(), parser)
    root = ini.resolve().parent
    rel = _relative(script_dir, root)
    section = _content.rolekit_section(f"{rel}/repeatable", f"{rel}/rotation.json")
    after = _content.add_rolekit_section(text, section)
    parser.read_string(section)
    change = FileChange(ini, Action.EDIT, text, after, "gains the [rolekit] section")
    return change, Settings.from_parser(ini.resolve(), parser)


def _in_git(root: Path, *args: str) -> bool:
    """Whether ``git -C root ARGS`` succeeds (``False`` without git or a repository)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _ignore_rules(root: Path, settings: Settings) -> list[tuple[str, str]]:
    """(a path git must ignore, the rule that ignores it), relative to *root*."""
    plaintext = {settings.default_secrets_file, *settings.secrets_files.values()}
    rules = [
        (_relative(path, root), _relative(path, root))
        for path in sorted(plaintext)
        if path.suffix != ".age" and path.is_relative_to(root)
    ]
    rules += [("passwords.env.lock", "*.env.lock"), ("passwords.prod.env.age.lock", "*.age.lock")]
    if settings.state_file.is_relative_to(root):
        lock = _relative(settings.state_file, root) + ".lock"
        rules.append((lock, lock))
    return rules


def _gitignore_change(root: Path, settings: Settings) -> FileChange:
    """``.gitignore`` gains the plaintext secrets files and rolekit's lock files,
    unless git ignores them already (by any rule, in any ignore file)."""
    path = root / ".gitignore"
    present = {line.strip().lstrip("/") for line in (read_text(path) or "").splitlines()}
    repo = _in_git(root, "rev-parse", "--is-inside-work-tree")
    missing = [
        f"{rule}\n"
        for example, rule in _ignore_rules(root, settings)
        if rule not in present
        and not (repo and _in_git(root, "check-ignore", "-q", "--no-index", example))
    ]
    header = "# rolekit: plaintext secrets files and rolekit's lock files\n"
    if missing and read_text(path):
        missing.insert(0, header)
    return with_lines(path, missing, header, "keeps secrets files and lock files out of git")


def _example_change(root: Path, family: FamilySpec | None) -> FileChange:
    path = root / "passwords.env.example"
    present = read_text(path) or ""
    keys = {line.split("=", 1)[0].strip() for line in present.splitlines() if "=" in line}
    lines = _content.example_lines(family.members, family.contexts) if family else []
    missing = [line for line in lines if line.split("=", 1)[0] not in keys]
    if not present and not missing:
        return FileChange(path, Action.CREATE, None, _content.EXAMPLE_HEADER, "the secrets' keys")
    return with_lines(path, missing, _content.EXAMPLE_HEADER, "the secrets' keys")


def _state_change(settings: Settings, family: FamilySpec | None) -> FileChange:
    path = settings.state_file
    before = read_text(path)
    state = RotationState.load(path)
    if family is not None:
        recorded = state.members_of(family.name)
        if recorded is not None and set(recorded) != set(family.members):
            raise RolekitError(
                f"{path} already records the members {', '.join(recorded)} for the family "
                f"{family.name!r}, not {', '.join(family.members)}"
            )
        for context in family.contexts:
            if state.get(family.name, context) is None:
                state.set(family.name, context, FamilyState(login=(family.members[0],)))
        state.members.setdefault(family.name, family.members)
    what = "the rotation state"
    if before is None:
        return FileChange(path, Action.CREATE, None, state.render(), what)
    if family is None or state.to_json() == RotationState.load(path).to_json():
        return FileChange(path, Action.UNCHANGED, before, None, what)
    return FileChange(path, Action.EDIT, before, state.render(), f"{what} gains {family.name}")


def _revision_change(script: ScriptDirectory, family: FamilySpec) -> FileChange:
    """The family's first revision, unless a revision already creates it."""
    for revision in script.walk_revisions():
        source = read_text(Path(revision.path)) or ""
        if _content.creates_family(source, family.name):
            note = f"revision {revision.revision} already creates {family.name}"
            return FileChange(Path(revision.path), Action.UNCHANGED, source, None, note)
    heads = script.get_heads()
    if len(heads) > 1:
        raise RolekitError(
            f"the project has {len(heads)} heads ({', '.join(heads)}): merge them first "
            "(alembic merge heads), then run rolekit init again"
        )
    upgrade, downgrade = _content.revision_bodies(family.name, family.members)
    revision_id = rev_id()
    message = f"create role family {family.name}"

    def write() -> Path:
        # Alembic prints "Generating ... done" on stdout, which is rolekit's (--json)
        with contextlib.redirect_stdout(io.StringIO()):
            made = script.generate_revision(
                revision_id, message, head="head", upgrades=upgrade, downgrades=downgrade
            )
        assert made is not None
        return Path(made.path)

    preview = f"def upgrade():\n    {upgrade}\n\n\ndef downgrade():\n    {downgrade}\n"
    folder = Path(script.versions)
    return FileChange(
        folder / f"{revision_id}_create_role_family_{family.name}.py",
        Action.CREATE,
        None,
        preview,
        f"a revision {revision_id} (revises {heads[0] if heads else 'nothing'}) from the "
        "project's script.py.mako",
        writer=write,
    )


def _env_change(script_dir: Path) -> FileChange:
    path = script_dir / "env.py"
    text = read_text(path)
    if text is None:
        raise RolekitError(f"{path} does not exist: the Alembic project has no env.py")
    plan = plan_env_py(text)
    action = {
        EnvPyCase.INTEGRATED: Action.UNCHANGED,
        EnvPyCase.STOCK: Action.EDIT,
        EnvPyCase.PATCHABLE: Action.CONFLICT,
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
    changes = [
        _env_change(script_dir),
        ini_change,
        whole_file(
            settings.repeatables_dir / "README.md",
            _content.REPEATABLES_README,
            "the repeatables folder",
        ),
        _state_change(settings, family),
        _gitignore_change(root, settings),
        _example_change(root, family),
    ]
    if family is not None:
        module = _content.repeatables_module(family.name, family.members, family.contexts)
        path = settings.repeatables_dir / f"{family.name}.py"
        changes.append(whole_file(path, module, f"the repeatables of {family.name}"))
        changes.append(_revision_change(script, family))
    if force:
        changes = [change.allow() for change in changes]
    report = InitReport(root, changes)
    if _in_git(root, "ls-files", "--error-unmatch", "passwords.env"):
        report.warnings.append(
            "passwords.env is committed to git: remove it from the index (git rm --cached "
            "passwords.env) and treat its passwords as leaked (rotate them)"
        )
    report.next_steps = _next_steps(report, family)
    return report


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
    for change in report.pending:
        report.written.append(change.apply())
    report.applied = True
    return report


def _next_steps(report: InitReport, family: FamilySpec | None) -> list[str]:
    steps = []
    if report.manual:
        steps.append("add the lines above to env.py")
    if family is None:
        steps.append(
            "declare a role family: rolekit init --family my_app --members my_app_tom,my_app_jerry"
        )
        return steps
    context, first = family.contexts[0], family.members[0]
    return [
        *steps,
        f"rolekit gen-password {first} --context {context} --write   # into passwords.env",
        f"alembic -x context={context} upgrade head",
        f"rolekit status --context {context}",
        f"rolekit rotate {family.name} auto --context {context} --max-age 90d --apply  "
        "# from cron: see the README",
    ]
