"""The server fails under a running upgrade: restarts, terminated and
cancelled backends, during the revisions, the repeatables and a drain.

Each fault must give a clear error (alembic's ``FAILED:`` line, not a
Python traceback), leave the catalog and the changelog exactly as before,
and a re-run of the very same files must converge.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable

import pytest

from rolekit.testing import Cluster, Project
from tests.plugins.reliability import Counts
from tests.reliability.helpers import (
    BILLING_IDS,
    CLEAN_ERROR,
    CONNECTION_LOST,
    TRACEBACK,
    LogTail,
    Spawned,
    alembic_cmd,
    assert_logins,
    cli,
    db_state,
    history,
    install_billing,
    server_now,
    slow_options,
    state_diff,
    wait_for_output,
    wait_idle,
)


def _signal_backend(function: str, marker: str) -> Callable[[Cluster], None]:
    def inject(cluster: Cluster) -> None:
        with contextlib.closing(cluster.connect()) as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT {function}(pid) FROM pg_stat_activity"
                " WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{marker}%",),
            )
            assert [r[0] for r in cur.fetchall()] == [True], f"no backend runs {marker!r}"

    return inject


def _restart(cluster: Cluster) -> None:
    cluster.restart("fast")


FAULTS = {
    "restart": lambda marker: _restart,
    "terminate": lambda marker: _signal_backend("pg_terminate_backend", marker),
    "cancel": lambda marker: _signal_backend("pg_cancel_backend", marker),
}
PHASES = {  # where the upgrade is paused: (marker, rolekit_test GUC)
    "revision": ("slow-revision", "revision_sleep"),
    "repeatable": ("slow-step", "sleep"),
}


def assert_clean_error(
    result: subprocess.CompletedProcess[str], problem: str = "connection"
) -> None:
    """No traceback; a ``FAILED:``-style line that says what happened."""
    stderr = result.stderr
    assert TRACEBACK not in stderr, f"raw traceback instead of a clear error:\n{stderr[-3000:]}"
    output = result.stdout + stderr
    assert CLEAN_ERROR.search(output), f"no FAILED:/rolekit: error line:\n{output[-3000:]}"
    if problem == "connection":
        assert CONNECTION_LOST.search(output), (
            f"the error does not say the connection was lost:\n{output[-3000:]}"
        )
    else:
        assert problem in output.lower(), output[-3000:]


@pytest.mark.parametrize(
    ("fault", "phase"),
    [
        ("restart", "revision"),
        ("restart", "repeatable"),
        ("terminate", "revision"),
        ("terminate", "repeatable"),
        ("cancel", "repeatable"),
    ],
)
def test_fault_during_upgrade_changes_nothing_and_rerun_converges(
    project: Project, counts: Counts, fault: str, phase: str
) -> None:
    cluster = project.cluster
    project.upgrade("dev")
    install_billing(project, pause_sql="pg_sleep(0.01)", slow=True)
    project.set_password("my_app_tom", "dev")  # set_passwords_dev re-runs in the same transaction
    before = db_state(cluster)
    runs_before = history(cluster)
    marker, guc = PHASES[phase]

    since = server_now(cluster)
    with LogTail(cluster) as tail:
        proc = Spawned(project, alembic_cmd("upgrade", "head", context="dev"), **slow_options(guc))
        tail.wait_for(f"'{marker}'", proc=proc)
        time.sleep(0.3)  # inside pg_sleep by now
        FAULTS[fault](marker)(cluster)
        counts.faults_injected += 1
        result = proc.finish(timeout=90)
    # one FAILED line, and exit 1: a database error, nothing committed
    assert result.returncode == 1 and "FAILED: database error:" in result.stdout, result.stderr

    wait_idle(cluster, since=since)
    after_fault = db_state(cluster)
    assert after_fault == before, f"half-applied after {fault}:\n{state_diff(before, after_fault)}"

    # The very same files again, without the pause: converges.
    project.upgrade("dev")
    assert project.query("SELECT version_num FROM alembic_version") == [("0003",)]
    new_runs = history(cluster)[len(runs_before) :]
    assert sorted(new_runs) == sorted(
        [("set_passwords_dev", "reran")] + [(i, "executed") for i in BILLING_IDS | {"slow_step"}]
    )
    assert_logins(project)

    assert_clean_error(result, "connection" if fault != "cancel" else "cancel")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_during_drain_of_a_plain_alembic_upgrade(
    project: Project, counts: Counts, mode: str
) -> None:
    """The GitOps path: rotation.json edited, then ``alembic upgrade`` drains.

    test_rotation covers ``rolekit rotate finish --apply`` with a fast
    restart; here the drain runs in ``alembic`` itself, the server also
    crashes (immediate), and the whole catalog and changelog are compared.
    """
    cluster = project.cluster
    project.upgrade("dev")
    project.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply")
    tom = project.secrets.get("my_app_tom", "dev").reveal()
    app = cluster.connect("my_app_tom", tom, application_name="billing-worker")
    try:
        finish = cli(project, "rotate", "my_app", "finish", "--context", "dev")
        assert finish.returncode == 0, finish.stderr
        before = db_state(cluster)
        state_file = project.state_path.read_bytes()

        since = server_now(cluster)
        proc = Spawned(
            project, alembic_cmd("upgrade", "head", context="dev", x={"drain_timeout": "60"})
        )
        wait_for_output(proc, "billing-worker")  # the drain shows who it waits for
        cluster.restart(mode)
        counts.faults_injected += 1
        result = proc.finish(timeout=90)
    finally:
        app.close()
    assert result.returncode != 0, result.stderr
    wait_idle(cluster, since=since)
    assert db_state(cluster) == before, state_diff(before, db_state(cluster))
    assert project.state_path.read_bytes() == state_file
    assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'") == [
        (True,)
    ]

    # The application is gone with the restart: the re-run drains at once.
    runs = len(history(cluster))
    project.upgrade("dev", x={"drain_timeout": "10"})
    login = project.query(
        "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname LIKE 'my_app%%'"
    )
    assert login == [("my_app_jerry",)]
    assert history(cluster)[runs:] == [("allow_login_for_my_app", "reran")]
    assert_logins(project)

    assert_clean_error(result)
