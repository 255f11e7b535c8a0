"""Run ``rotate auto``'s ``--publish`` command: credentials on stdin, one process group.

The command is a shell line (``kubectl``, ``aws``, a script) whose own children
get the credentials too.  It starts in a session of its own, so ending it ends
every process it started: on its timeout, on SIGTERM to rolekit, and once the
shell has exited (a child left in the background must not publish after a
newer run).  Its stdout is discarded unread (a command may print megabytes,
or echo what it read); of its stderr only a bounded tail is kept, for the
error message.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from rolekit._process import hold_sigterm

#: bytes of the command's stderr kept (the last ones): enough for its error
STDERR_TAIL: Final = 64 * 1024
#: seconds the command's processes get between SIGTERM and SIGKILL
GRACE: Final = 5.0
#: the most read from stderr once the shell has exited (a leftover child may
#: keep writing): its error is written by then
_DRAIN_AFTER_EXIT: Final = 1024 * 1024


@dataclass(frozen=True)
class Finished:
    """How the command ended, and the last of what it wrote to stderr."""

    returncode: int | None
    stderr_tail: bytes
    #: the tail starts inside the output (its first line may be a fragment)
    truncated: bool = False
    timed_out: bool = False

    def how(self) -> str:
        """``exited 3``, ``killed by signal 9 (SIGKILL)``."""
        code = self.returncode
        if code is None or code >= 0:
            return f"exited {code}"
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"killed by signal {-code}{name}"


def run(command: str, stdin: bytes, *, env: dict[str, str], cwd: Path, timeout: float) -> Finished:
    """Run *command* with ``/bin/sh``, *stdin* on its stdin, for at most *timeout* seconds.

    Every process it started is ended before this returns or raises (an
    exception here is SIGTERM to rolekit): SIGTERM to the group, then SIGKILL
    after :data:`GRACE` seconds.
    """
    release = hold_sigterm()
    try:
        proc = subprocess.Popen(
            command,
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        release()
        raise
    assert proc.stdin is not None and proc.stderr is not None
    try:
        release()  # a SIGTERM that came while the command started is raised here
        # a thread: a command that reads only part of a large stdin must not block the reading of stderr
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
        feeder.start()
        tail, timed_out = _stderr_tail(proc, proc.stderr, time.monotonic() + timeout)
    finally:
        _end_group(proc)
        proc.stderr.close()
    code = None if timed_out else proc.returncode
    return Finished(code, bytes(tail.data), tail.truncated, timed_out)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write *data* and close: a command that exits without reading it all is no error here."""
    with contextlib.suppress(OSError):
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


class _Tail:
    """The last :data:`STDERR_TAIL` bytes written, and whether earlier ones were dropped."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > STDERR_TAIL:
            del self.data[:-STDERR_TAIL]
            self.truncated = True


def _stderr_tail(
    proc: subprocess.Popen[bytes], stderr: IO[bytes], deadline: float
) -> tuple[_Tail, bool]:
    """The tail of stderr until the shell exits, and whether *deadline* passed first."""
    tail = _Tail()
    fd = stderr.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while proc.poll() is None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                return tail, True
            if selector.select(min(wait, 0.2)):
                chunk = os.read(fd, 65536)
                if not chunk:  # closed by all: only the shell's exit is left to wait for
                    break
                tail.add(chunk)
        if proc.returncode is not None:
            _drain(selector, fd, tail)
    try:
        proc.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return tail, True
    return tail, False


def _drain(selector: selectors.BaseSelector, fd: int, tail: _Tail) -> None:
    """What the exited shell wrote last; a child left running may keep writing, so
    read only what is there now, up to :data:`_DRAIN_AFTER_EXIT` bytes."""
    budget = _DRAIN_AFTER_EXIT
    while budget > 0 and selector.select(0):
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        tail.add(chunk)
        budget -= len(chunk)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """End every process of the command's group: SIGTERM, then SIGKILL after :data:`GRACE`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # nothing left of it
        proc.wait()
        return
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        proc.poll()  # reap the shell: a zombie would count as a member of the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
