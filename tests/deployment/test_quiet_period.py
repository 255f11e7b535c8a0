"""A client between connections still uses the member (issue: the drain sees the whole deployment).

Finding 1: a job connected as the outgoing member every second for 20 ms
and never moved; finish succeeded and 16 of its next 20 connections failed.
The drain now passes only once no use was seen anywhere for a quiet period,
polling fast enough to see a 20 ms connection.  Each test runs as a
superuser and as the least-privileged migrator.
"""

from __future__ import annotations

import re
import sys

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import Client, connect_as
from tests.guards.helpers import can_login, rotate
from tests.test_rotation import FINISH, wait_for_output


def test_an_intermittent_client_keeps_finish_from_disabling_its_member(
    any_project: Project,
) -> None:
    project = any_project
    project.upgrade("dev")
    rotate(project, "begin")
    with Client(connect_as(project, "my_app_tom"), interval=1.0, hold=0.02) as job:
        before, state = role_snapshot(project.cluster), project.state()
        proc = rotate(
            project, "finish", "--quiet-period", "2.5", "--drain-timeout", "6", check=False
        )
        assert proc.returncode == 3, proc.stderr
        assert "drain timeout (6s)" in proc.stderr
        assert "nothing was changed" in proc.stderr
        # progress shows what was seen and how much of the quiet period is left
        seen = re.findall(
            r"drain: last use \d+s ago \(1 session\(s\) on primary [^)]*\(my_app_tom: app@",
            proc.stderr,
        )
        assert seen, proc.stderr
        assert "of the quiet period left" in proc.stderr
        assert role_snapshot(project.cluster) == before
        assert project.state() == state
    # the job stopped (it moved, or was retired): once quiet, finish passes
    finish = rotate(project, "finish", "--quiet-period", "2", "--drain-timeout", "20")
    drained = re.search(r"drained after ([\d.]+)s \(no use seen for ([\d.]+)s\)", finish.stderr)
    assert drained and float(drained.group(2)) >= 2.0, finish.stderr
    assert job.failures == []
    assert job.attempts >= 5
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_a_client_that_moves_sees_no_failure(any_project: Project) -> None:
    """The issue's job, moved to the new credentials while finish waits: 0 failures."""
    project = any_project
    project.upgrade("dev")
    rotate(project, "begin")
    with Client(connect_as(project, "my_app_tom"), interval=0.25, hold=0.02) as job:
        finish = project.spawn(
            sys.executable,
            "-m",
            "rolekit.cli",
            *FINISH,
            "30",
            "--quiet-period",
            "1.5",
        )
        try:
            wait_for_output(finish, "drain: watching")
            job.switch(connect_as(project, "my_app_jerry"))
            _, err = finish.communicate(timeout=60)
        finally:
            if finish.poll() is None:
                finish.kill()
        assert finish.returncode == 0, err
    assert job.failures == []
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_quiet_period_settings(any_project: Project) -> None:
    """``--quiet-period`` = ``-x drain_quiet_period``, over ROLEKIT_DRAIN_QUIET_PERIOD,
    over alembic.ini; one longer than the timeout could never pass: exit 2."""
    project = any_project
    project.upgrade("dev")
    rotate(project, "begin")
    before = role_snapshot(project.cluster)
    proc = rotate(project, "finish", "--quiet-period", "20", "--drain-timeout", "10", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "drain timeout (10s) is shorter than the quiet period (20s)" in proc.stderr
    assert "nothing was changed" in proc.stderr
    proc = project.upgrade("dev", x={"drain_quiet_period": "-1"}, check=False)
    assert (
        proc.returncode != 0
        and "drain_quiet_period = '-1' is not a number of seconds" in proc.stderr
    )
    # alembic.ini's value, when nothing overrides it
    del project.extra_env["ROLEKIT_DRAIN_QUIET_PERIOD"]
    ini = project.root / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "drain_timeout = 300", "drain_timeout = 300\ndrain_quiet_period = 1.5"
        )
    )
    finish = rotate(project, "finish")
    assert "(quiet period 1.5s, timeout 300s)" in finish.stderr
    assert role_snapshot(project.cluster) != before
