"""One planned change to one file of a project, shown as a diff and applied atomically."""

from __future__ import annotations

import difflib
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rolekit._fileio import atomic_write
from rolekit.errors import RolekitError


class Action(enum.Enum):
    """What ``rolekit init`` does to a file."""

    #: the file does not exist: it is written
    CREATE = "create"
    #: lines are added to an existing file, or Alembic's untouched template is replaced
    EDIT = "edit"
    #: already as rolekit needs it
    UNCHANGED = "unchanged"
    #: exists with other content: changed only with ``--force``
    CONFLICT = "conflict"
    #: rolekit cannot edit it safely: the user adds the lines it names
    MANUAL = "manual"


@dataclass(frozen=True)
class FileChange:
    """One file: what is there, what rolekit wants there, and why."""

    path: Path
    action: Action
    before: str | None
    after: str | None
    note: str
    #: a conflict the user allowed with ``--force``
    forced: bool = False
    #: writes the file itself (an Alembic revision, named by Alembic); returns its path
    writer: Callable[[], Path] | None = None

    @property
    def writes(self) -> bool:
        return self.action in (Action.CREATE, Action.EDIT) or self.forced

    def allow(self) -> FileChange:
        """The change with ``--force``: a conflict is made."""
        return replace(self, forced=True) if self.action is Action.CONFLICT else self

    def diff(self, root: Path) -> str:
        """A unified diff of the change, paths relative to the project folder."""
        if self.after is None:
            return ""
        name = os.path.relpath(self.path, root)
        return "".join(
            difflib.unified_diff(
                (self.before or "").splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                fromfile="/dev/null" if self.before is None else f"a/{name}",
                tofile=f"b/{name}",
            )
        )

    def apply(self) -> Path:
        """Write the file (folders included); keep an existing file's mode."""
        if self.writer is not None:
            return self.writer()
        assert self.after is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o644
        atomic_write(self.path, self.after.encode("utf-8"), mode=mode, fail=RolekitError)
        return self.path


def read_text(path: Path) -> str | None:
    """The file's text, ``None`` when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RolekitError(f"cannot read {path}: {exc}") from None


def whole_file(path: Path, wanted: str, what: str) -> FileChange:
    """A file rolekit writes whole: created, left alone, or a conflict."""
    before = read_text(path)
    if before is None:
        return FileChange(path, Action.CREATE, None, wanted, what)
    if before == wanted:
        return FileChange(path, Action.UNCHANGED, before, None, what)
    return FileChange(
        path,
        Action.CONFLICT,
        before,
        wanted,
        f"{what}: exists with other content; rolekit replaces it only with --force",
    )


def with_lines(path: Path, missing: list[str], header: str, what: str) -> FileChange:
    """A file that gains the *missing* lines at its end (under *header* if it is new)."""
    before = read_text(path)
    if not missing:
        return FileChange(path, Action.UNCHANGED, before, None, what)
    if before is None:
        return FileChange(path, Action.CREATE, None, header + "".join(missing), what)
    glue = "" if not before or before.endswith("\n") else "\n"
    return FileChange(path, Action.EDIT, before, before + glue + "".join(missing), what)
