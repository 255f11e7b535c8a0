"""One planned change to one file of a project, shown as a diff and applied atomically."""

from __future__ import annotations

import difflib
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rolekit._fileio import atomic_write
from rolekit.errors import RolekitError, mask_url_passwords


class Action(enum.Enum):
    """What ``rolekit init`` does to a file."""

    #: the file does not exist: it is written
    CREATE = "create"
    #: lines are added to an existing file, or Alembic's untouched template is replaced
    EDIT = "edit"
    #: already as rolekit needs it
    UNCHANGED = "unchanged"
    #: exists with other content: replaced only with ``--force``
    CONFLICT = "conflict"
    #: the user adds the lines: shown as a diff that ``--force`` applies, or,
    #: where rolekit cannot edit safely, described with their line numbers
    MANUAL = "manual"


@dataclass(frozen=True)
class FileChange:
    """One file: what is there, what rolekit wants there, and why."""

    path: Path
    action: Action
    before: str | None
    after: str | None
    note: str
    #: a conflict or an edit by hand the user allowed with ``--force``
    forced: bool = False
    #: writes the file itself (an Alembic revision, named by Alembic); returns its path
    writer: Callable[[], Path] | None = None

    @property
    def writes(self) -> bool:
        return self.action in (Action.CREATE, Action.EDIT) or self.forced

    @property
    def waits_for_user(self) -> bool:
        """A conflict or an edit by hand that ``--force`` did not allow."""
        return self.action in (Action.CONFLICT, Action.MANUAL) and not self.forced

    def allow(self) -> FileChange:
        """The change with ``--force``: a conflict, or an edit rolekit can make, is made."""
        if self.action is Action.CONFLICT or (self.action is Action.MANUAL and self.after):
            return replace(self, forced=True)
        return self

    def diff(self, root: Path) -> str:
        """A unified diff of the change, paths relative to the project folder,
        passwords of URLs in it masked."""
        if self.after is None:
            return ""
        name = os.path.relpath(self.path, root)
        lines = difflib.unified_diff(
            to_lf(self.before or "").splitlines(keepends=True),
            self.after.splitlines(keepends=True),
            fromfile="/dev/null" if self.before is None else f"a/{name}",
            tofile=f"b/{name}",
        )
        return mask_url_passwords("".join(lines))

    def apply(self) -> Path:
        """Write the file (folders included) through a symlink, keeping its mode and
        its line endings."""
        if self.writer is not None:
            return self.writer()
        assert self.after is not None
        target = self.path.resolve() if self.path.is_symlink() else self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        text = self.after
        if self.before is not None and "\r\n" in self.before:
            text = text.replace("\n", "\r\n")
        atomic_write(target, text.encode("utf-8"), mode=mode, fail=RolekitError)
        return self.path


def to_lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def read_text(path: Path) -> str | None:
    """The file's text with its line endings as they are; ``None`` when it does not exist."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RolekitError(f"cannot read {path}: {exc}") from None


def whole_file(path: Path, wanted: str, what: str) -> FileChange:
    """A file rolekit writes whole: created, left alone, or a conflict."""
    before = read_text(path)
    if before is None:
        return FileChange(path, Action.CREATE, None, wanted, what)
    if to_lf(before) == wanted:
        return FileChange(path, Action.UNCHANGED, before, None, what)
    return FileChange(
        path,
        Action.CONFLICT,
        before,
        wanted,
        f"{what}: exists with other content; rolekit replaces it only with --force",
    )


def absent_only(path: Path, wanted: str, what: str) -> FileChange:
    """A file rolekit writes only where there is none (whatever is there is kept)."""
    before = read_text(path)
    if before is None:
        return FileChange(path, Action.CREATE, None, wanted, what)
    return FileChange(path, Action.UNCHANGED, before, None, what)


def with_lines(path: Path, missing: list[str], header: str, what: str) -> FileChange:
    """A file that gains the *missing* lines at its end (under *header* if it is new)."""
    before = read_text(path)
    if not missing:
        return FileChange(path, Action.UNCHANGED, before, None, what)
    if before is None:
        return FileChange(path, Action.CREATE, None, header + "".join(missing), what)
    text = to_lf(before)
    glue = "" if not text or text.endswith("\n") else "\n"
    return FileChange(path, Action.EDIT, before, text + glue + "".join(missing), what)
