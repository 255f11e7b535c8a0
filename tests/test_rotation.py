"""Rotations under load and the guards, driven through the rolekit CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import threading
import time
from subprocess import CompletedProcess, Popen
from typing import Any

import psycopg2
import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import wait_for_no_sessions


def rotate(project: Project, phase: str, *extra: str, check: bool = True) -> CompletedProcess[str]:
    """``rolekit rotate my_app PHASE --context dev --apply [extra]``."""
    return project.rolekit(
        "rotate", "my_app", phase, "--context", "dev", "--apply", *extra, check=check
    )


def begin_with_old_app(project: Project, app: str = "billing") -> tuple[dict[str, str], Any]:
    """Upgrade, begin a rotation, and connect an application still on the old member."""
    project.upgrade("dev")
    old = creds(project)
    rotate(project, "begin")
    wait_for_no_sessions(project.cluster, old["user"])  # the upgrade's own login check
    return old, project.cluster.connect(old["user"], old["password"], application_name=app)


def creds(project: Project) -> dict[str, str]:
    return json.loads(project.rolekit("creds", "my_app", "--context", "dev", "--json").stdout)


def _worker(dsn_base: str, shared: Any, stop: Any, counts: Any) -> None:
    """Reconnect continuously with whatever credentials were last handed out."""
    while not stop.is_set():
        user, password = shared["creds"]  # one read: never a user with another's password
        counts[0] += 1
        try:
            conn = psycopg2.connect(dsn_base, user=user, password=password, connect_timeout=5)
            with conn.cursor() as cur:
                cur.execute("SELECT session_user")
            conn.close()
        except psycopg2.Error:
            counts[1] += 1


def test_two_full_rotations_under_load_have_zero_failed_connections(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    manager = mp.Manager()
    first = creds(project)
    shared = manager.dict(creds=(first["user"], first["password"]))
    stop = mp.Event()
    counters = [mp.Array("l", 2) for _ in range(6)]
    dsn = f"host={project.cluster.host} port={project.cluster.port} dbname=postgres"
    workers = [mp.Process(target=_worker, args=(dsn, shared, stop, c)) for c in counters]
    for w in workers:
        w.start()
    seen_users = set()
    try:
        for expected in ("my_app_jerry", "my_app_tom"):
            rotate(project, "begin")
            time.sleep(0.5)  # applications redeploy with the new credentials
            handed_out = creds(project)
            shared["creds"] = (handed_out["user"], handed_out["password"])
            assert handed_out["user"] == expected
            seen_users.add(expected)
            rotate(project, "finish", "--drain-timeout", "30")
            time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    attempts = sum(c[0] for c in counters)
    failures = sum(c[1] for c in counters)
    print(f"rotation under load: {attempts} connection attempts, {failures} failed")
    assert attempts > 100
    assert failures == 0
    assert project.query(
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'my_app%%' AND rolcanlogin"
    ) == [("my_app_tom",)]


def test_begin_twice_and_finish_without_begin_are_refused(project: Project) -> None:
    project.upgrade("dev")
    proc = project.rolekit("rotate", "my_app", "finish", "--context", "dev", check=False)
    assert proc.returncode == 4 and "run 'rolekit rotate my_app begin' first" in proc.stderr
    project.rolekit("rotate", "my_app", "begin", "--context", "dev")
    state = project.state()
    proc = project.rolekit("rotate", "my_app", "begin", "--context", "dev", check=False)
    assert proc.returncode == 4 and "is in phase 'overlap'" in proc.stderr
    assert project.state() == state


def test_concurrent_begin_exactly_one_wins(project: Project) -> None:
    project.upgrade("dev")
    cmd = [sys.executable, "-m", "rolekit.cli", "rotate", "my_app", "begin", "--context", "dev"]
    procs = [project.spawn(*cmd) for _ in range(2)]
    for p in procs:
        p.communicate(timeout=60)
    assert sorted(p.returncode for p in procs) == [0, 4]
    assert project.state()["families"]["my_app"]["dev"] == {
        "login": ["my_app_tom", "my_app_jerry"],
        "incoming": "my_app_jerry",
        "serial": 1,
    }


def test_lockout_guard(project: Project) -> None:
    project.upgrade("dev")
    before = role_snapshot(project.cluster)
    project.edit_state("my_app", "dev", {"login": []})
    proc = project.upgrade("dev", check=False)
    assert proc.returncode != 0 and "lets no member log in" in proc.stderr
    assert role_snapshot(project.cluster) == before


def test_password_guard(project: Project) -> None:
    project.upgrade("dev")
    before = role_snapshot(project.cluster)
    data = project.state()
    data["families"]["my_app"]["qa"] = {"login": ["my_app_tom"]}
    project.write_state(data)
    proc = project.upgrade("qa", check=False)
    assert proc.returncode != 0
    assert "refusing to enable login for 'my_app_tom'" in proc.stderr
    assert role_snapshot(project.cluster) == before


def test_drain_timeout_changes_nothing_and_shows_progress(project: Project) -> None:
    _, app = begin_with_old_app(project)
    try:
        before, state = role_snapshot(project.cluster), project.state()
        proc = rotate(project, "finish", "--drain-timeout", "2", check=False)
        assert proc.returncode == 3
        assert "drain: waiting for 1 session(s) on primary 127.0.0.1:" in proc.stderr
        assert "/postgres (my_app_tom: billing@127.0.0.1 x1)" in proc.stderr
        assert "nothing was changed" in proc.stderr
        assert role_snapshot(project.cluster) == before
        assert project.state() == state  # the state file is back to overlap
        rotate(project, "finish", "--drain-timeout", "1", "--terminate")
        assert app.closed or _is_dead(app)
    finally:
        app.close()


FINISH = ("rotate", "my_app", "finish", "--context", "dev", "--apply", "--drain-timeout")


def wait_for_output(proc: Popen[str], needle: str) -> str:
    """Read *proc*'s stderr until a line holds *needle* (the drain's progress lines)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(seen)}")


def test_drain_waits_until_the_last_session_leaves(project: Project) -> None:
    _, app = begin_with_old_app(project)
    proc = project.spawn(sys.executable, "-m", "rolekit.cli", *FINISH, "60")
    waiting = wait_for_output(proc, "drain: waiting")
    app.close()  # the application moves over mid-drain
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, waiting + rest
    assert "drain: waiting for 1 session(s) on primary 127.0.0.1:" in waiting
    assert "/postgres (my_app_tom: billing@127.0.0.1 x1)" in waiting
    assert "drain: my_app_tom drained after" in rest
    assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'") == [
        (False,)
    ]


def _is_dead(conn: Any) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return False
    except psycopg2.Error:
        return True


def test_session_that_comes_back_during_drain_is_caught(project: Project) -> None:
    old, first = begin_with_old_app(project)
    holder: list[Any] = [first]

    def late_app() -> None:
        # The last old session ends, but an application that was not
        # redeployed reconnects with the old member while the drain waits.
        time.sleep(2.5)
        holder.append(project.cluster.connect(old["user"], old["password"]))
        first.close()

    thread = threading.Thread(target=late_app)
    thread.start()
    proc = rotate(project, "finish", "--drain-timeout", "6", check=False)
    thread.join()
    try:
        assert len(holder) == 2, "the late application could still log in during the drain"
        assert proc.returncode == 3 and "my_app_tom" in proc.stderr
        assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'") == [
            (True,)
        ]
    finally:
        for conn in holder:
            conn.close()


def test_restart_during_drain_then_rerun_resumes(project: Project) -> None:
    _, app = begin_with_old_app(project)
    proc = project.spawn(sys.executable, "-m", "rolekit.cli", *FINISH, "30")
    wait_for_output(proc, "drain: waiting")
    project.cluster.restart("fast")
    _, err = proc.communicate(timeout=60)
    app.close()
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert project.state()["families"]["my_app"]["dev"]["login"] == ["my_app_tom", "my_app_jerry"]
    assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'") == [
        (True,)
    ]
    rotate(project, "finish", "--drain-timeout", "10")
    assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'") == [
        (False,)
    ]


def test_status_and_check_report_drift_with_exit_codes(project: Project) -> None:
    project.upgrade("dev")
    assert project.rolekit("check", "--context", "dev").stdout.strip() == "no drift"
    status = json.loads(project.rolekit("status", "--context", "dev", "--json").stdout)
    (family,) = status["families"]
    assert family["phase"] == "steady" and family["preferred"] == "my_app_tom"
    assert {m["name"]: m["can_login"] for m in family["members"]} == {
        "my_app_tom": True,
        "my_app_jerry": False,
    }
    assert status["last_runs"]
    set_at = {m["name"]: m["password_set_at"] for m in family["members"]}
    assert set_at["my_app_tom"] and set_at["my_app_jerry"]
    rotate(project, "begin")  # sets only jerry's password
    family = json.loads(project.rolekit("status", "--context", "dev", "--json").stdout)["families"][
        0
    ]
    after = {m["name"]: m["password_set_at"] for m in family["members"]}
    assert (
        after["my_app_tom"] == set_at["my_app_tom"]
        and after["my_app_jerry"] > set_at["my_app_jerry"]
    )
    project.query("ALTER ROLE my_app_jerry NOLOGIN")  # drift against the overlap state
    proc = project.rolekit("check", "--context", "dev", "--json", check=False)
    assert proc.returncode == 1
    assert any("drift: 'my_app_jerry' is NOLOGIN" in p for p in json.loads(proc.stdout)["problems"])
    assert project.rolekit("status", "--context", "dev", check=False).returncode == 1


def test_help_teaches_with_examples(project: Project) -> None:
    for command in ("plan", "rotate", "creds", "status", "check", "gen-password"):
        out = project.rolekit(command, "--help").stdout
        assert "example:" in out and "rolekit " in out


def test_expire_retire_mode_sets_valid_until(project: Project) -> None:
    project.edit_state("my_app", "dev", {"login": ["my_app_tom"], "retire": "expire"})
    project.upgrade("dev")
    rows = project.query(
        "SELECT rolname, rolvaliduntil < now() FROM pg_roles WHERE rolname LIKE 'my_app_%%' ORDER BY 1"
    )
    assert rows == [("my_app_jerry", True), ("my_app_tom", False)]
    with pytest.raises(psycopg2.OperationalError):
        project.cluster.connect("my_app_jerry", project.secrets.get("my_app_jerry", "dev").reveal())
