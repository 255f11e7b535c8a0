"""Exact login tracking on PostgreSQL 17+ (issue: the drain sees the whole deployment).

``op.enable_login_tracking()`` installs a ``login`` event trigger that
records the logins of the members rolekit marks as leaving.  An error in a
login trigger blocks every login to the database, so the fault tests break
it every way the issue names and check that logins still work.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import Client, connect_as
from tests.guards.helpers import can_login, is_migrator, login_as, rotate


def with_tracking(project: Project) -> str:
    """Add the revision and upgrade; return what the upgrade printed."""
    project.add_revision(
        "0003", "0002", "op.enable_login_tracking()", "op.disable_login_tracking()"
    )
    return project.upgrade("dev").stderr


def tracked(project: Project) -> dict[str, int]:
    rows = project.cluster.connect().cursor()
    rows.execute("SELECT role::text, sum(logins)::int FROM rolekit_logins GROUP BY role")
    return dict(rows.fetchall())


def leaving(project: Project) -> set[str]:
    """Members whose logins the trigger records (marked by a per-role setting)."""
    rows = project.cluster.connect().cursor()
    rows.execute(
        "SELECT r.rolname::text FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
        " WHERE s.setdatabase <> 0 AND 'rolekit.leaving=on' = ANY(s.setconfig)"
    )
    return {r[0] for r in rows.fetchall()}


def status_of(project: Project) -> dict:  # type: ignore[type-arg]
    out = project.rolekit("status", "--context", "dev", "--json", check=False).stdout
    return json.loads(out)["families"][0]  # type: ignore[no-any-return]


@pytest.mark.compat
def test_tracking_is_installed_only_where_it_can_work(any_project: Project) -> None:
    project = any_project
    out = with_tracking(project)
    family = status_of(project)
    if project.cluster.major < 17:
        assert f"PostgreSQL {project.cluster.major} has no login event triggers" in out
        assert "login tracking unavailable" in family["login_tracking"]
    elif is_migrator(project):
        assert "installing a login event trigger needs a superuser" in out
        assert "login tracking is off" in family["login_tracking"]
    else:
        assert family["login_tracking"] == "on"
    # the revision upgrades and downgrades everywhere
    project.alembic("downgrade", "0002", context="dev")
    assert project.cluster.query_one("SELECT count(*) FROM pg_event_trigger") == 0
    assert project.cluster.query_one("SELECT to_regclass('rolekit_logins')") is None


@pytest.mark.since(17)
@pytest.mark.compat
def test_finish_refuses_while_the_leaving_member_logs_in(project: Project) -> None:
    with_tracking(project)
    rotate(project, "begin")
    assert leaving(project) == {"my_app_tom"}
    login_as(project, "my_app_jerry").close()  # not leaving: not recorded
    login_as(project, "my_app_tom").close()
    assert tracked(project) == {"my_app_tom": 1}
    tom = next(m for m in status_of(project)["members"] if m["name"] == "my_app_tom")
    primary = tom["places"][0]
    assert primary["kind"] == "primary" and primary["last_login_from"] == "127.0.0.1"
    assert primary["last_login"] is not None
    # logins too short to sample: connect and leave at once, every 0.3 s
    with Client(connect_as(project, "my_app_tom"), interval=0.3, hold=0) as job:
        before = role_snapshot(project.cluster)
        proc = rotate(project, "finish", "--quiet-period", "2", "--drain-timeout", "4", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "tracked login address(es) on primary" in proc.stderr
        assert "(my_app_tom: " in proc.stderr and "login(s)@127.0.0.1" in proc.stderr
        assert role_snapshot(project.cluster) == before
    assert job.failures == []
    finish = rotate(project, "finish", "--quiet-period", "1", "--drain-timeout", "20")
    assert "drained after" in finish.stderr
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    assert leaving(project) == set() and tracked(project) == {}


FAULTS = {
    "table dropped": ["DROP TABLE rolekit_logins"],
    "privileges revoked": [
        "CREATE ROLE powerless NOLOGIN",
        "ALTER FUNCTION rolekit_track_login() OWNER TO powerless",
        "REVOKE ALL ON rolekit_logins FROM powerless",
    ],
    "read-only transaction": ["ALTER ROLE my_app_tom SET default_transaction_read_only = on"],
}


@pytest.mark.since(17)
@pytest.mark.compat
@pytest.mark.parametrize("fault", [*FAULTS, "table locked"])
def test_a_broken_tracker_never_blocks_a_login(project: Project, fault: str) -> None:
    with_tracking(project)
    rotate(project, "begin")
    admin = project.cluster.connect(autocommit=False)
    try:
        with admin.cursor() as cur:
            if fault == "table locked":  # a migration holding the tables
                cur.execute("LOCK TABLE rolekit_logins IN ACCESS EXCLUSIVE MODE")
            else:
                for stmt in FAULTS[fault]:
                    cur.execute(stmt)
                admin.commit()
        offset = project.cluster.log_size()
        for role in ("my_app_tom", "my_app_jerry"):
            login_as(project, role).close()
        project.cluster.connect().close()
    finally:
        admin.rollback()
        admin.close()
    log = project.cluster.log_since(offset)
    assert "rolekit login tracking skipped for my_app_tom" in log, log[-2000:]
    # a role that is not leaving touches no table: no fault reaches it
    assert "rolekit login tracking skipped for my_app_jerry" not in log


@pytest.mark.since(17)
@pytest.mark.compat
def test_the_tracker_writes_nothing_on_a_standby(project: Project) -> None:
    with_tracking(project)
    rotate(project, "begin")
    with project.cluster.standby() as standby:
        for role in ("my_app_tom", "my_app_jerry"):
            connect_as(project, role, standby)().close()
        assert standby.query_one("SELECT count(*) FROM pg_event_trigger") == 1
    assert tracked(project) == {}


@pytest.mark.since(17)
def test_enabling_tracking_never_holds_logins(project: Project) -> None:
    """``CREATE EVENT TRIGGER ... ON login`` locks every new login to the database
    until its transaction ends (PostgreSQL 17 sets ``pg_database.dathasloginevt``
    under an exclusive lock).  rolekit creates the trigger after the migration
    commits, so a slow migration after it stalls no login."""
    project.upgrade("dev")
    rotate(project, "begin")  # both members log in; the upgrade checks their passwords
    with_tracking_revision = project.add_revision(
        "0003", "0002", "op.enable_login_tracking()", "op.disable_login_tracking()"
    )
    project.add_revision("0004", "0003", "op.execute('SELECT pg_sleep(3)')", "pass")
    upgrade = project.spawn(sys.executable, "-m", "alembic", "-x", "context=dev", "upgrade", "head")
    try:
        logins, deadline = 0, time.monotonic() + 2.5
        while time.monotonic() < deadline:
            login_as(project, "my_app_jerry", connect_timeout=2).close()
            logins += 1
            time.sleep(0.1)
        _, err = upgrade.communicate(timeout=60)
    finally:
        if upgrade.poll() is None:
            upgrade.kill()
    assert upgrade.returncode == 0, err
    assert logins >= 10
    assert with_tracking_revision.exists()
    assert status_of(project)["login_tracking"] == "on"
