"""Guards see every session, whatever the migration user may see in detail (findings 1, 2, 7).

Without ``pg_read_all_stats`` PostgreSQL hides the type and address of other
users' backends; a drain that filtered on ``backend_type`` said "drained"
while a member ran a query.  Each test runs as a superuser and as the
least-privileged migrator, whose view of the members is taken back to what an
unprivileged user sees.
"""

from __future__ import annotations

import json
import time

import psycopg2
import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import wait_for_no_sessions
from tests.guards.helpers import (
    QueryLoop,
    can_login,
    check,
    creds,
    is_migrator,
    login_as,
    revoke_member_grants,
    rotate,
    sessions_of,
    sleeping_session,
)


def test_drain_counts_sessions_it_cannot_see_in_detail(any_project: Project) -> None:
    """Finding 1: a 25 s query of the outgoing member must keep finish from disabling it."""
    project = any_project
    project.upgrade("dev")
    revoke_member_grants(project)
    rotate(project, "begin")
    wait_for_no_sessions(project.cluster, "my_app_tom")  # the upgrade's own login check
    with sleeping_session(project, "my_app_tom", 25):
        status = json.loads(project.rolekit("status", "--context", "dev", "--json").stdout)
        tom = next(m for m in status["families"][0]["members"] if m["name"] == "my_app_tom")
        assert tom["sessions"] == 1
        assert tom["sessions_hidden"] == (1 if is_migrator(project) else 0)
        before, state = role_snapshot(project.cluster), project.state()
        proc = rotate(project, "finish", "--drain-timeout", "3", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "drain: waiting for 1 session(s) on primary " in proc.stderr
        assert "(my_app_tom: sleeper@" in proc.stderr
        if is_migrator(project):
            assert "sleeper@<hidden>" in proc.stderr
            assert "needs pg_read_all_stats or membership in my_app_tom" in proc.stderr
        assert "nothing was changed" in proc.stderr
        assert role_snapshot(project.cluster) == before
        assert project.state() == state
    # The query ended: finish goes through.
    rotate(project, "finish", "--drain-timeout", "10")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_drop_refuses_members_with_sessions_and_terminate_ends_them(any_project: Project) -> None:
    """Finding 2: downgrade base dropped roles while a member ran pg_sleep(900)."""
    project = any_project
    project.upgrade("dev")
    revoke_member_grants(project)
    with sleeping_session(project, "my_app_tom") as pid:
        before = role_snapshot(project.cluster)
        proc = project.downgrade(check=False)
        assert proc.returncode != 0
        assert "members have live sessions (my_app_tom: 1)" in proc.stderr
        assert "nothing was changed" in proc.stderr
        assert role_snapshot(project.cluster) == before
        project.downgrade(x={"terminate": "true"})
        assert project.query("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == [
            (0,)
        ]
    assert project.query("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'my_app%%'") == [(0,)]


def test_terminate_disables_first_then_ends_sessions_and_none_come_back(
    any_project: Project,
) -> None:
    """Finding 7: --terminate ended sessions before NOLOGIN committed; apps got back in.

    A repeatable that runs after the login change (and before the commit)
    keeps the window open long enough for the application to reconnect.
    """
    project = any_project
    project.write_repeatables(AFTER_LOGIN, "zz_after_login.py")
    project.upgrade("dev")
    old = creds(project)
    rotate(project, "begin")
    # An application that was never moved: it reconnects at once when its
    # session is ended, with the old member's credentials.
    with QueryLoop(project, old["user"], interval=0.05, secret=old["password"]) as app:
        time.sleep(0.5)
        proc = rotate(project, "finish", "--drain-timeout", "2", "--terminate")
        assert "drain: terminating" in proc.stderr
        assert sessions_of(project, "my_app_tom") == []
        time.sleep(0.5)
        assert sessions_of(project, "my_app_tom") == []
    assert can_login(project)["my_app_tom"] is False
    assert any("not permitted to log in" in e for e in app.errors)
    assert check(project).returncode == 0


AFTER_LOGIN = """
from rolekit.repeatable import Sql


class AfterLogin(Sql):
    phase = 1  # with the login changes, after FamilyLogin (a later file)


REPEATABLES = [AfterLogin("after_login", "SELECT pg_sleep(1)", run_always=True)]
"""


def test_terminate_without_the_privilege_is_refused_before_any_change(
    managed_project: Project,
) -> None:
    """A migrator that may not end sessions must say so up front, not half-way
    (only the least-privileged migrator: a superuser may always end them)."""
    project = managed_project
    project.upgrade("dev")
    revoke_member_grants(project)
    rotate(project, "begin")
    with sleeping_session(project, "my_app_tom"):
        before, state = role_snapshot(project.cluster), project.state()
        proc = rotate(project, "finish", "--drain-timeout", "1", "--terminate", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "may not signal their backends" in proc.stderr
        assert "GRANT pg_signal_backend TO migrator" in proc.stderr
        assert role_snapshot(project.cluster) == before
        assert project.state() == state


def test_check_flags_sessions_of_a_disabled_member(any_project: Project) -> None:
    """Finding 7: check said nothing about sessions left on a NOLOGIN member."""
    project = any_project
    project.upgrade("dev")
    revoke_member_grants(project)
    app = login_as(project, "my_app_tom")
    try:
        project.query("ALTER ROLE my_app_tom NOLOGIN")  # by hand, sessions stay
        proc = check(project)
        assert proc.returncode == 1
        assert "'my_app_tom' is NOLOGIN but has 1 session(s)" in proc.stdout
    finally:
        app.close()
    with pytest.raises(psycopg2.OperationalError):
        login_as(project, "my_app_tom")
