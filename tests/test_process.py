"""A SIGTERM to rolekit while it starts a child never leaves the child running
(rolekit._process.hold_sigterm, used by the publish command and sops)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rolekit._process import hold_sigterm
from rolekit.rotation import publish
from tests.processes import gone


class Raised(BaseException):
    """What rolekit's SIGTERM handler raises (rolekit.cli.Interrupted)."""


@pytest.fixture
def raising_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Raised

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_held_sigterm_is_delivered_on_release(raising_sigterm: None) -> None:
    release = hold_sigterm()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler would have run by now
    with pytest.raises(Raised):
        release()
    release_nothing = hold_sigterm()
    release_nothing()  # no SIGTERM came: nothing is raised


def test_sigterm_while_the_publish_command_starts_ends_its_whole_group(
    raising_sigterm: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM arriving inside Popen, after the fork: the command and the process
    it started are ended all the same (before, the exception left Popen with the
    group running and nobody to end it)."""
    real_popen = subprocess.Popen
    pid_file = tmp_path / "grandchild.pid"
    started: list[subprocess.Popen[bytes]] = []

    def popen_then_sigterm(*args: Any, **kwargs: Any) -> Any:
        started.append(real_popen(*args, **kwargs))
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # a handler not held back raises here, inside Popen
        return started[-1]

    monkeypatch.setattr(publish.subprocess, "Popen", popen_then_sigterm)
    command = f"sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}; cat >/dev/null; sleep 300"
    try:
        with pytest.raises(Raised):
            publish.run(command, b"{}", env=dict(os.environ), cwd=tmp_path, timeout=60)
        (shell,) = started
        assert gone(shell.pid) and gone(int(pid_file.read_text()))
    finally:
        for proc in started:  # whatever a failure left: its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
