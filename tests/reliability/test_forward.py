"""Issue 19's property: whatever file a deploy finds, the database never moves backwards.

A hypothesis state machine on one real cluster: rotation phases (``rotate
my_app begin/finish --apply``), rotations killed with SIGKILL at a random
moment, restorations of ``rotation.json`` or ``passwords.env`` from any
earlier "commit" (a snapshot taken after every step that changed them),
recovery to the latest commit, and upgrades.  After every step:

* an application holding the latest credentials rolekit handed out
  (``rolekit creds`` after each successful phase) still logs in;
* no member accepts a password it had before and that rolekit replaced.

Examples share the cluster: each starts with ``alembic downgrade base`` and
the example project's files.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rolekit.testing import Project
from tests.plugins.reliability import Counts
from tests.reliability.helpers import TRACEBACK, login_works, machine_settings

MEMBERS = ("my_app_tom", "my_app_jerry")
FILES = {"state": "migrations/rotation.json", "secrets": "passwords.env"}
EXAMPLES = 3
STEPS = 8


class ForwardMachine(RuleBasedStateMachine):
    def __init__(self, project: Project, counts: Counts, backup: Path, shared: dict[str, Any]):
        super().__init__()
        self.project, self.counts = project, counts
        if shared.get("upgraded"):
            result = project.alembic("downgrade", "base", x={"terminate": "true"}, check=False)
            assert result.returncode == 0, result.stderr[-2000:]
        for name in FILES.values():
            shutil.copy2(backup / name, project.root / name)
        self._upgrade(expect_ok=True)
        shared["upgraded"] = True
        #: the files after every step that changed them ("commits"), oldest first
        self.commits: list[dict[str, str]] = []
        self._commit()
        self.handed = self._creds()

    # -- plumbing ------------------------------------------------------------

    def _files(self) -> dict[str, str]:
        return {k: (self.project.root / v).read_text() for k, v in FILES.items()}

    def _commit(self) -> None:
        files = self._files()
        if not self.commits or self.commits[-1] != files:
            self.commits.append(files)

    def _creds(self) -> tuple[str, str]:
        result = self.project.rolekit("creds", "my_app", "--context", "dev", "--json")
        doc = json.loads(result.stdout)
        return doc["user"], doc["password"]

    def _upgrade(self, *, expect_ok: bool = False) -> int:
        result = self.project.upgrade("dev", x={"drain_timeout": "2"}, check=False)
        self.counts.stateful_steps += 1
        assert TRACEBACK not in result.stderr, result.stderr[-3000:]
        if expect_ok:
            assert result.returncode == 0, result.stderr[-3000:]
        return result.returncode

    def _passwords(self, files: dict[str, str], member: str) -> str | None:
        prefix = f"{member}.password.dev="
        lines = [line for line in files["secrets"].splitlines() if line.startswith(prefix)]
        return lines[-1][len(prefix) :].strip("'\"") if lines else None

    def _current(self) -> bool:
        return self._files() == self.commits[-1]

    # -- rules ---------------------------------------------------------------

    @precondition(lambda self: self._current())
    @rule(phase=st.sampled_from(["begin", "finish"]))
    def rotate(self, phase: str) -> None:
        args = ["rotate", "my_app", phase, "--context", "dev", "--apply"]
        result = self.project.rolekit(*args, check=False)
        self.counts.stateful_steps += 1
        assert result.returncode in (0, 4), result.stderr[-3000:]  # 4: wrong phase
        if result.returncode == 0:
            self._commit()
            self.handed = self._creds()

    @precondition(lambda self: self._current())
    @rule(phase=st.sampled_from(["begin", "finish"]), delay=st.floats(0.0, 2.5))
    def kill_a_rotation(self, phase: str, delay: float) -> None:
        """SIGKILL at a random moment; the same phase run again completes it."""
        cmd = [sys.executable, "-m", "rolekit.cli", "rotate", "my_app", phase]
        proc = self.project.spawn(*cmd, "--context", "dev", "--apply")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        self.counts.stateful_steps += 1
        result = self.project.rolekit(*cmd[3:], "--context", "dev", "--apply", check=False)
        assert result.returncode in (0, 4), result.stderr[-3000:]
        self._commit()
        self.handed = self._creds()

    @precondition(lambda self: len(self.commits) > 1)
    @rule(data=st.data(), which=st.sampled_from([("state",), ("secrets",), ("state", "secrets")]))
    def restore_an_earlier_commit(self, data: st.DataObject, which: tuple[str, ...]) -> None:
        """An old checkout, a rolled-back release, a restored backup: then deploy it."""
        old = self.commits[data.draw(st.integers(0, len(self.commits) - 2))]
        for name in which:
            (self.project.root / FILES[name]).write_text(old[name])
        code = self._upgrade()
        assert code in (0, 3), code
        if code == 0:  # it was only a no-op for the database: then it is current
            self._commit()

    @rule()
    def back_to_the_latest_commit(self) -> None:
        for name, text in self.commits[-1].items():
            (self.project.root / FILES[name]).write_text(text)
        self._upgrade(expect_ok=True)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def the_latest_credentials_handed_out_log_in(self) -> None:
        user, password = self.handed
        assert login_works(self.project.cluster, user, password), f"{user} locked out"

    @invariant()
    def no_retired_password_is_enabled(self) -> None:
        latest = self.commits[-1]
        for member in MEMBERS:
            current = self._passwords(latest, member)
            retired = {self._passwords(c, member) for c in self.commits} - {current, None}
            for password in retired:
                assert password is not None
                assert not login_works(self.project.cluster, member, password), (
                    f"{member} accepts a password rolekit replaced"
                )


@pytest.mark.slow
def test_files_never_move_the_database_backwards(
    any_project: Project, counts: Counts, tmp_path: Path
) -> None:
    project = any_project
    backup = tmp_path / "backup"
    for name in FILES.values():
        (backup / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project.root / name, backup / name)
    shared: dict[str, Any] = {}
    run_state_machine_as_test(
        lambda: ForwardMachine(project, counts, backup, shared),
        settings=machine_settings(EXAMPLES, STEPS),
    )
