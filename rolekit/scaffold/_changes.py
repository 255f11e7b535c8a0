"""One planned change to one file of a project, shown as a diff and applied atomically.

A project is someone else's input: a cloned repository can commit a symlink
where rolekit writes (``.gitignore`` pointing at ``~/.bashrc``, a dangling
``passwords.env.example``), and its ``[rolekit]`` settings choose the lines
written.  So every file rolekit changes or shows a diff of must stay inside
the project folder once every symlink on its way is followed
(:func:`check_inside`): a symlink within the project to a file within the
project is followed, any other is refused, naming the link.
"""

from __future__ import annotations

import difflib
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rolekit._fileio import atomic_write, read_regular_file
from rolekit.errors import GuardError, RolekitError, mask_url_passwords

#: the largest file init reads (env.py, alembic.ini, a revision): text a person wrote
READ_LIMIT = 16 * 1024 * 1024


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

    def apply(self, root: Path) -> Path:
        """Write the file (folders included) through a symlink that stays in the
        project, keeping its mode and its line endings."""
        target = check_inside(self.path, root)  # again: the plan was checked, the disk may move
        if self.writer is not None:
            return self.writer()
        assert self.after is not None
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
    """The file's text with its line endings as they are; ``None`` when it does not
    exist (a dangling symlink included).  Anything but a regular file is refused:
    a FIFO would hang the read, a device would never end."""
    if not os.path.exists(path):
        return None
    data, _ = read_regular_file(
        path, READ_LIMIT, what=str(path), fail=RolekitError, follow_symlinks=True
    )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RolekitError(f"cannot read {path}: it is not UTF-8 text") from None


def _first_link(path: Path, root: Path) -> Path | None:
    """The first symlink on *path*'s way from *root* (``None``: no link, or *path*
    is not under *root* as written)."""
    if not path.is_relative_to(root):
        return None
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            return here
    return None


def check_inside(path: Path, root: Path) -> Path:
    """*path* with every symlink followed, refused unless it is inside *root* and,
    when it exists, a regular file; its real path is returned."""
    name = os.path.relpath(path, root)
    try:
        real, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise GuardError(f"{name}: cannot follow its symlinks (a loop?)") from None
    if not real.is_relative_to(real_root):
        link = _first_link(path, root)
        if link is None:
            raise GuardError(f"{path} is outside the project folder {root}")
        where = name if link == path else f"{name}: {os.path.relpath(link, root)}"
        raise GuardError(
            f"{where} is a symlink to {os.readlink(link)}, which leads outside the project "
            f"folder {root}"
        )
    if os.path.lexists(real) and not real.is_file():
        raise GuardError(f"{name} is not a regular file")
    return real


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
