"""The drain asks PgBouncer who uses the old member (issue: the drain sees the whole deployment).

A PgBouncer client holds no backend between transactions, and PgBouncer
keeps idle server connections for ``server_idle_timeout`` (600 s by
default).  rolekit reads ``SHOW CLIENTS`` (a client of the leaving member is
a user) and closes the leaving member's idle server connections itself, by
the ``remote_pid`` of ``SHOW SERVERS``.  PgBouncer runs with its default
timeouts, with ``auth_file`` and with ``auth_query``; each test runs as a
superuser and as the least-privileged migrator.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from rolekit.testing import PgBouncer, Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import Client
from tests.guards.helpers import can_login, password, rotate
from tests.plugins.postgres import MEMBERS


@pytest.fixture(params=["file", "query"])
def bouncer(request: pytest.FixtureRequest, any_project: Project) -> Iterator[PgBouncer]:
    """PgBouncer with its default timeouts in front of the project's database."""
    project = any_project
    project.upgrade("dev")
    users = {m: password(project, m) for m in MEMBERS} if request.param == "file" else {}
    admin = ("pgbouncer_admin", secrets.token_urlsafe(18))
    with PgBouncer(project.cluster, auth=request.param, users=users, admin=admin) as pooler:
        assert "server_idle_timeout" not in pooler.settings  # PgBouncer's default: 600 s
        project.extra_env["ROLEKIT_POOLERS"] = pooler.admin_url()
        yield pooler


def through(bouncer: PgBouncer, project: Project, role: str) -> Callable[[], Any]:
    def connect() -> Any:
        conn = psycopg2.connect(
            host=bouncer.host,
            port=bouncer.port,
            dbname=bouncer.dbname,
            user=role,
            password=password(project, role),
            application_name="pooled",
        )
        conn.autocommit = True
        return conn

    return connect


def _begin(project: Project, bouncer: PgBouncer) -> None:
    rotate(project, "begin")
    if bouncer.auth == "file":  # the deploy step: the new password into auth_file, RELOAD
        bouncer.set_users({"my_app_jerry": password(project, "my_app_jerry")})


def test_finish_closes_idle_pool_connections_and_loses_no_client(
    any_project: Project, bouncer: PgBouncer
) -> None:
    project = any_project
    with Client(through(bouncer, project, "my_app_tom"), interval=0.05, hold=0.01) as app:
        time.sleep(0.5)  # PgBouncer now pools server connections of my_app_tom
        _begin(project, bouncer)
        app.switch(through(bouncer, project, "my_app_jerry"))
        time.sleep(0.5)
        # without rolekit, tom's idle server connections would live 600 s more
        assert (
            project.query("SELECT count(*) FROM pg_stat_activity WHERE usename = 'my_app_tom'")[0][
                0
            ]
            >= 1
        )
        finish = rotate(project, "finish", "--drain-timeout", "60")
    assert "drain: closed " in finish.stderr, finish.stderr
    assert "idle pool connection(s) of my_app_tom on pooler 127.0.0.1:" in finish.stderr
    assert "instead of waiting out server_idle_timeout" in finish.stderr
    assert "drained after" in finish.stderr
    assert app.failures == []
    assert app.attempts > 20
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_a_pooler_client_of_the_old_member_keeps_it_in_use(
    any_project: Project, bouncer: PgBouncer
) -> None:
    project = any_project
    _begin(project, bouncer)
    with Client(through(bouncer, project, "my_app_tom"), keep=True, interval=0.5) as app:
        before = role_snapshot(project.cluster)
        proc = rotate(project, "finish", "--drain-timeout", "3", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "1 pooler client(s) on pooler 127.0.0.1:" in proc.stderr
        assert "(my_app_tom: pooled@127.0.0.1 x1)" in proc.stderr
        # its server connection is linked to the client: never closed under it
        assert "drain: closed" not in proc.stderr
        assert role_snapshot(project.cluster) == before
    assert app.failures == []


def test_an_unreachable_pooler_is_refused(any_project: Project, bouncer: PgBouncer) -> None:
    project = any_project
    _begin(project, bouncer)
    before = role_snapshot(project.cluster)
    project.extra_env["ROLEKIT_POOLERS"] = (
        "postgresql://pgbouncer_admin:wrong@127.0.0.1:1/pgbouncer"
    )
    proc = rotate(project, "finish", "--drain-timeout", "3", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "cannot reach pooler 127.0.0.1:1's admin console" in proc.stderr
    assert "wrong" not in proc.stderr
    project.extra_env["ROLEKIT_POOLERS"] = bouncer.admin_url().replace(
        ":" + bouncer.admin[1] + "@", ":wrong@"
    )  # type: ignore[index]
    proc = rotate(project, "finish", "--drain-timeout", "3", check=False)
    assert proc.returncode == 5, proc.stderr
    assert role_snapshot(project.cluster) == before
