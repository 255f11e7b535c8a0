"""File I/O shared by the secrets file and the rotation state file.

Both files are read by deploys while rolekit may be rewriting them, and both
hold the truth about passwords that are in the database: a torn or lost
write is a lost password.  So every write goes through :func:`atomic_write`
(temporary file, fsync, rename, fsync of the folder) and concurrent writers
serialise on :func:`flocked`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

#: (mtime_ns, size, inode): changes whenever a file is edited or replaced
Stamp = tuple[int, int, int]

Fail = Callable[[str], Exception]


def stamp_of(info: os.stat_result) -> Stamp:
    """The stamp of a ``stat`` result.

    The inode catches a same-size file put in place by ``os.replace``
    within one mtime tick (coarse on some file systems).
    """
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def file_stamp(path: Path) -> Stamp | None:
    """The stamp of *path*, or ``None`` when it cannot be stat'ed."""
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


def read_regular_file(
    path: Path, limit: int, *, what: str, fail: Fail, follow_symlinks: bool = False
) -> tuple[bytes, os.stat_result]:
    """Read at most *limit* bytes of a regular file, refusing anything else.

    The size is checked with ``fstat`` before reading, so a huge file (or a
    sparse one of a terabyte) costs nothing, and at most ``limit + 1`` bytes
    are ever read in case it grows meanwhile.  The file is opened with
    ``O_NOFOLLOW`` (unless *follow_symlinks*), so a symlink swapped in after
    a check is refused too, and ``O_NONBLOCK`` so a FIFO cannot hang us.

    :param fail: builds the exception to raise from a problem description.
    """
    if not follow_symlinks and path.is_symlink():
        raise fail(
            f"{what} is a symlink; refusing to follow it (it could point at "
            "any file): use the real path instead"
        )
    too_big = f"{what} is larger than {limit // 1024} KiB; refusing to read it"
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise fail(f"{what} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail(f"{what} is a symlink; refusing to follow it") from None
        raise fail(f"cannot open {what}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail(f"{what} is not a regular file")
        if info.st_size > limit:
            raise fail(too_big)
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 16))):
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise fail(too_big)
    return data, info


def _kind(mode: int) -> str:
    """What a non-regular file is, for a refusal."""
    kinds = (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "something else")


def require_replaceable(path: Path, *, fail: Fail) -> None:
    """Refuse to replace *path* unless it is absent or a regular file.

    ``os.replace`` swaps whatever is at *path*: a symlink (``/dev/stdout``
    as root, a link a repository committed) or a device would be replaced
    for every later reader, not written to.  ``lstat``, so a link is seen as
    one whatever it points at.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise fail(f"cannot stat {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise fail(f"{path} is {_kind(info.st_mode)}, not a regular file; refusing to replace it")


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    fail: Fail,
    keep_suffix: bool = True,
) -> None:
    """Replace *path* with *data* so readers see the old or the new file, whole.

    Only a regular file (or nothing) is replaced: see :func:`require_replaceable`.

    The temporary file is created in the same folder (``os.replace`` is only
    atomic within a file system) and fsynced before the rename; the folder is
    fsynced after, so the rename survives a crash.  Its name
    (``.passwords.env.XXXX.tmp.env``) keeps the file's suffix, so an ignore
    rule like ``*.env`` also covers a temporary file a crash left behind.

    :param keep_suffix: ``False`` ends the temporary name in ``.tmp`` instead,
        for a folder whose reader takes every file with the suffix (a
        textfile collector reads every ``*.prom``, a half-written one too).
    """
    require_replaceable(path, fail=fail)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise fail(f"cannot write {path}: {exc.strerror}") from None
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def flocked(lock_path: Path, *, fail: Fail, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *lock_path* (created 0600 if needed).

    A separate lock file, never replaced or deleted, is what makes the lock
    work: the files it protects are replaced by ``os.replace`` on every
    write, so a lock on them would be a lock on an old inode.

    :param wait: block until the lock is free; otherwise raise ``fail(...)``
        at once when another process holds it.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise fail(f"cannot open lock file {lock_path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise fail(f"it holds {lock_path}") from None
        yield
    finally:
        os.close(fd)  # releases the lock
