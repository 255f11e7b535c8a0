"""Starting child processes that must never outlive rolekit's wait for them.

``rolekit`` turns SIGTERM into an exception (a cancelled CI job unwinds, see
:mod:`rolekit.cli`).  Raised inside :class:`subprocess.Popen` after the fork,
it would leave the new process group running with nobody to end it.
:func:`hold_sigterm` keeps SIGTERM back while a child starts; the caller
releases it where a ``finally`` ends the child's group.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


def hold_sigterm() -> Callable[[], None]:
    """Hold SIGTERM back (its handler only records it); return the release.

    The release restores the handler and, if SIGTERM came meanwhile, delivers
    it then: the handler runs (rolekit's raises), or the default action ends
    the process.  Off the main thread, where handlers cannot be changed and
    never run, holding is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    held: list[FrameType | None] = []

    def record(signum: int, frame: FrameType | None) -> None:
        held.append(frame)

    previous = signal.signal(signal.SIGTERM, record)

    def release() -> None:
        signal.signal(signal.SIGTERM, previous)
        if not held:
            return
        if callable(previous):
            previous(signal.SIGTERM, held[0])
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGTERM)

    return release
