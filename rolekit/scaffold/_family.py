"""``rolekit init --family``: the family's repeatables, first revision and rotation state."""

from __future__ import annotations

import ast
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError, rev_id

from rolekit.errors import RolekitError, first_line
from rolekit.model.contexts import check_context_name
from rolekit.model.names import check_role_name
from rolekit.project.config import Settings
from rolekit.project.state import FamilyState, RotationState, new_lineage
from rolekit.scaffold import _content
from rolekit.scaffold._changes import Action, FileChange, read_text, whole_file

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

    @property
    def module_name(self) -> str:
        # the loader skips modules whose name starts with "_" (private helpers)
        return f"{'family' if self.name.startswith('_') else ''}{self.name}.py"


def _declares_login(source: str, family: str) -> bool:
    """Whether a repeatables module declares ``FamilyLogin(..., family, ...)``."""
    with contextlib.suppress(SyntaxError):
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "FamilyLogin"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == family
            ):
                return True
    return False


def repeatables_change(settings: Settings, family: FamilySpec) -> FileChange:
    """The family's repeatables module, unless a module there already declares its login."""
    folder = settings.repeatables_dir
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else ():
        source = read_text(path) or ""
        if _declares_login(source, family.name):
            note = f"already declares the login of {family.name}"
            return FileChange(path, Action.UNCHANGED, source, None, note)
    module = _content.repeatables_module(family.name, family.members, family.contexts)
    return whole_file(folder / family.module_name, module, f"the repeatables of {family.name}")


def state_change(settings: Settings, family: FamilySpec | None) -> FileChange:
    """``rotation.json``: created empty, or gaining the family in each context."""
    path = settings.state_file
    before = read_text(path)
    state = RotationState.load(path)
    original = state.to_json()
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
    state.lineage = state.lineage or new_lineage()  # this project's file from here on
    if before is None:
        return FileChange(path, Action.CREATE, None, state.render(), what)
    if family is None or state.to_json() == original:
        return FileChange(path, Action.UNCHANGED, before, None, what)
    return FileChange(path, Action.EDIT, before, state.render(), f"{what} gains {family.name}")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Alembic prints "Generating ..." and post-write hooks (black, ruff) print to
    stdout, which is rolekit's (``--json``): send both to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _write_revision(
    script: ScriptDirectory, family: FamilySpec, revision_id: str, bodies: tuple[str, str]
) -> Path:
    """Write the revision through Alembic (its template, file name and hooks), and
    check the template placed the operations; remove the file otherwise."""
    upgrade, downgrade = bodies
    try:
        with _stdout_to_stderr():
            made = script.generate_revision(
                revision_id,
                f"create role family {family.name}",
                head="head",
                upgrades=upgrade,
                downgrades=downgrade,
            )
    except Exception as exc:  # the template, a post-write hook: anything the project runs
        for left in Path(script.versions).rglob(f"*{revision_id}*.py"):
            left.unlink()  # written before its hook failed
        raise RolekitError(f"Alembic could not write the revision: {first_line(exc)}") from None
    assert made is not None
    path = Path(made.path)
    if not _content.creates_family(read_text(path) or "", family.name):
        path.unlink()
        raise RolekitError(
            f"the project's script.py.mako does not place ${{upgrades}} in upgrade(): the "
            f"revision would not create {family.name}, so it was not kept"
        )
    return path


def revision_change(script: ScriptDirectory, family: FamilySpec) -> FileChange:
    """The family's first revision, unless a revision already creates it."""
    try:
        for revision in script.walk_revisions():
            source = read_text(Path(revision.path)) or ""
            if _content.creates_family(source, family.name):
                note = f"revision {revision.revision} already creates {family.name}"
                return FileChange(Path(revision.path), Action.UNCHANGED, source, None, note)
        heads = script.get_heads()
        folder = Path(script.versions)
    except CommandError as exc:
        raise RolekitError(f"cannot read the project's revisions: {exc}") from None
    if len(heads) > 1:
        raise RolekitError(
            f"the project has {len(heads)} heads ({', '.join(heads)}): merge them first "
            "(alembic merge heads), then run rolekit init again"
        )
    bodies = _content.revision_bodies(family.name, family.members)
    revision_id = rev_id()
    return FileChange(
        folder / f"{revision_id}_create_role_family_{family.name}.py",
        Action.CREATE,
        None,
        f"def upgrade():\n    {bodies[0]}\n\n\ndef downgrade():\n    {bodies[1]}\n",
        f"a revision {revision_id} (revises {heads[0] if heads else 'nothing'}) from the "
        "project's script.py.mako",
        writer=lambda: _write_revision(script, family, revision_id, bodies),
    )
