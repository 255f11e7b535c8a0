"""Kill ``rotate --apply`` in every phase; the next run completes it (finding 8).

Each run is stopped by ``tests/guards/killpoint.py`` at one exact point, with
SIGTERM and with SIGKILL.  Afterwards ``rolekit check`` is clean or names the
step to re-run, a re-run completes, no password is lost (the one the server
has is the one on file) and no begin happens twice.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from rolekit.testing import Project
from tests.guards.helpers import KILLPOINT, can_login, check, creds, password, rotate
from tests.reliability.helpers import Spawned, rolekit_cmd, wait_for_output

BEGIN_POINTS = {
    # secrets file written, nothing sent yet
    "before-upgrade": "rolekit.rotation.workflow:_upgrade",
    # inside the migration transaction, passwords sent, not committed
    "in-transaction": "rolekit.repeatable.changelog:record",
    # committed; logging in as the new member to verify it
    "verifying": "rolekit.runtime.environment:verify_logins",
    # committed and verified; the state file not yet written
    "before-state-file": "rolekit.project.state:RotationState.save",
}
FINISH = ("rotate", "my_app", "finish", "--context", "dev", "--apply")
FINISH_POINTS = {
    "in-transaction": "rolekit.repeatable.run:RunContext.decisive_check",
    "before-state-file": "rolekit.project.state:RotationState.save",
    # with --terminate: NOLOGIN committed, the stragglers not yet ended
    "terminating": "rolekit.deployment.drain:terminate_and_confirm",
}


def _killed(
    project: Project, point: str, signame: str, *args: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        *KILLPOINT,
        point,
        signame,
        "--",
        "rotate",
        "my_app",
        *args,
        "--context",
        "dev",
        "--apply",
    ]
    proc = project.run(*cmd, check=False)
    expected = -9 if signame == "SIGKILL" else 143
    assert proc.returncode == expected, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _consistent(project: Project) -> str:
    """check is clean, or names the step to re-run; returns what it said."""
    proc = check(project)
    if proc.returncode == 0:
        return ""
    assert proc.returncode == 1
    assert "was interrupted after its commit" in proc.stdout and "Re-run it" in proc.stdout, (
        proc.stdout
    )
    return proc.stdout


def _apps_can_log_in(project: Project) -> None:
    found = creds(project)
    project.cluster.connect(found["user"], found["password"]).close()
    for role, ok in can_login(project).items():
        if ok:  # every member that may log in accepts the password on file
            project.cluster.connect(role, password(project, role)).close()


def _begin_phases(project: Project, signame: str) -> None:
    for phase, point in BEGIN_POINTS.items():
        active = creds(project)["user"]
        standby = "my_app_jerry" if active == "my_app_tom" else "my_app_tom"
        _killed(project, point, signame, "begin")
        said = _consistent(project)
        on_file = password(project, standby)
        committed = can_login(project)[standby]
        if phase in ("verifying", "before-state-file"):
            assert committed and "begin --context dev --apply' was interrupted" in said, phase
        rerun = rotate(project, "begin")
        if committed:  # no second begin: the password the server has is kept
            assert "completed an earlier run" in rerun.stdout, phase
            assert password(project, standby) == on_file
        assert check(project).returncode == 0, phase
        _apps_can_log_in(project)
        rotate(project, "finish", "--drain-timeout", "10")
        assert creds(project)["user"] == standby


def _finish_phases(project: Project, signame: str) -> None:
    for phase, point in [("drain", ""), *FINISH_POINTS.items()]:
        old = creds(project)["user"]
        rotate(project, "begin")
        leftover = None
        if phase in ("drain", "terminating"):
            # an application still on the old member keeps the drain waiting
            leftover = project.cluster.connect(old, password(project, old))
        extra = ["--drain-timeout", "1", "--terminate"] if phase == "terminating" else []
        extra = extra or ["--drain-timeout", "30"]
        if phase == "drain":
            run = Spawned(project, rolekit_cmd(*FINISH, *extra))
            wait_for_output(run, "drain: waiting")
            run.proc.send_signal(getattr(signal, signame))
            assert run.finish(timeout=60).returncode in (-9, 143)
        else:
            _killed(project, point, signame, "finish", *extra)
        said = _consistent(project)
        if phase in ("before-state-file", "terminating"):
            assert "finish --context dev --apply' was interrupted" in said, phase
        if leftover is not None:
            leftover.close()
        rotate(project, "finish", "--drain-timeout", "10")
        assert check(project).returncode == 0, phase
        assert can_login(project)[old] is False
        _apps_can_log_in(project)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_rotations_killed_in_every_phase_are_completed_by_the_next_run(
    any_project: Project, signame: str
) -> None:
    """Each phase of ``begin --apply``, then of ``finish --apply``, killed in turn."""
    project = any_project
    project.upgrade("dev")
    _begin_phases(project, signame)
    _finish_phases(project, signame)
