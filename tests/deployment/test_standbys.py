"""The drain watches every streaming standby (issue: the drain sees the whole deployment).

A hot standby replays ``NOLOGIN`` from the primary: an application reading
from it as the old member is locked out as surely as one on the primary.
Each test runs on a primary with a direct and a cascaded standby, as a
superuser and as the least-privileged migrator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from rolekit.testing import Cluster, Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import (
    Client,
    connect_as,
    may_identify_standbys,
    replica_urls,
    wait_for_no_sessions,
)
from tests.guards.helpers import can_login, is_migrator, password, rotate
from tests.plugins.deployment import Replicated
from tests.plugins.postgres import example_project


def _login_fails(project: Project, server: object, role: str) -> str:
    with pytest.raises(psycopg2.OperationalError) as failed:
        server.connect(role, password(project, role)).close()  # type: ignore[attr-defined]
    return str(failed.value)


def test_finish_waits_for_a_reader_on_a_cascaded_standby(
    deployed_project: Project, replicated: Replicated
) -> None:
    """Finding 2: finish succeeded while an app read from a standby as the old member."""
    project = deployed_project
    may_identify_standbys(project, replicated)
    replicas = replica_urls(replicated.direct, replicated.cascade)
    project.extra_env["ROLEKIT_REPLICAS"] = replicas
    project.upgrade("dev")
    begin = rotate(project, "begin")
    # the new member's password and LOGIN are on both standbys before begin returns
    for standby in (replicated.direct, replicated.cascade):
        assert f"replicas: replica {standby.host}:{standby.port}/postgres replayed" in begin.stderr
        connect_as(project, "my_app_jerry", standby)().close()
    with Client(
        connect_as(project, "my_app_tom", replicated.cascade), keep=True, interval=0.1
    ) as app:
        before, state = role_snapshot(project.cluster), project.state()
        proc = rotate(project, "finish", "--drain-timeout", "3", check=False)
        assert proc.returncode == 3, proc.stderr
        where = f"on replica {replicated.cascade.host}:{replicated.cascade.port}/postgres"
        assert f"drain: waiting for 1 session(s) {where} (my_app_tom: app@" in proc.stderr
        assert "nothing was changed" in proc.stderr
        assert role_snapshot(project.cluster) == before
        assert project.state() == state
        # the app moves to the new member; the old one is then unused everywhere
        app.switch(connect_as(project, "my_app_jerry", replicated.cascade))
        finish = rotate(project, "finish", "--drain-timeout", "30")
        assert "drained after" in finish.stderr
        # NOLOGIN is replayed on both standbys before finish returns
        for standby in (replicated.direct, replicated.cascade):
            assert "not permitted to log in" in _login_fails(project, standby, "my_app_tom")
            connect_as(project, "my_app_jerry", standby)().close()
    assert app.failures == []
    assert app.attempts > 20
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


@pytest.mark.parametrize("configured", ["none", "direct only"])
def test_finish_refuses_while_unknown_standbys_stream(
    deployed_project: Project, replicated: Replicated, configured: str
) -> None:
    project = deployed_project
    if configured == "direct only":  # the cascade streams from the direct standby
        project.extra_env["ROLEKIT_REPLICAS"] = replica_urls(replicated.direct)
    project.upgrade("dev")
    rotate(project, "begin")
    before = role_snapshot(project.cluster)
    proc = rotate(project, "finish", "--drain-timeout", "5", check=False)
    assert proc.returncode == 3, proc.stderr
    known = 0 if configured == "none" else 1
    streaming = 1 if configured == "none" else 2
    assert (
        f"{streaming} streaming standby(s) replicate this database" in proc.stderr
        and f"but {known} replica(s) are configured; nothing was changed" in proc.stderr
    ), proc.stderr
    # addresses where PostgreSQL shows them (pg_read_all_stats), else said hidden
    if is_migrator(project):
        assert "<address hidden>" in proc.stderr
        assert "without pg_read_all_stats" in proc.stderr
    else:
        assert "127.0.0.1 (standby_" in proc.stderr
    assert role_snapshot(project.cluster) == before
    status = project.rolekit("status", "--context", "dev", "--json", check=False)
    assert status.returncode == 1
    assert any(
        "streaming standby(s)" in p for p in json.loads(status.stdout)["deployment_problems"]
    )
    # `replicas = unchecked` is the explicit way to accept it
    project.extra_env["ROLEKIT_REPLICAS"] = "unchecked"
    rotate(project, "finish", "--drain-timeout", "10")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_unreachable_or_wrong_replicas_are_refused(
    deployed_project: Project, replicated: Replicated
) -> None:
    project = deployed_project
    project.upgrade("dev")
    rotate(project, "begin")
    before = role_snapshot(project.cluster)
    # a port nobody listens on (the primary's, plus one, is not a server here)
    project.extra_env["ROLEKIT_REPLICAS"] = "postgresql://127.0.0.1:1/postgres"
    proc = rotate(project, "finish", "--drain-timeout", "5", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "cannot reach replica 127.0.0.1:1/postgres" in proc.stderr
    assert "so it refuses" in proc.stderr
    # the primary is no standby
    project.extra_env["ROLEKIT_REPLICAS"] = replica_urls(project.cluster)
    proc = rotate(project, "finish", "--drain-timeout", "5", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "is not a standby (pg_is_in_recovery() is false); nothing was changed" in proc.stderr
    # a malformed entry is named, without echoing what could be a password
    project.extra_env["ROLEKIT_REPLICAS"] = "postgresql://u:s3cret@[::1"
    proc = rotate(project, "finish", "--drain-timeout", "5", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "not a postgresql://host:port/db URL" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout
    assert role_snapshot(project.cluster) == before


def test_status_reports_each_member_on_each_host(
    deployed_project: Project, replicated: Replicated
) -> None:
    project = deployed_project
    may_identify_standbys(project, replicated)
    project.extra_env["ROLEKIT_REPLICAS"] = replica_urls(replicated.direct, replicated.cascade)
    project.upgrade("dev")
    for server in (project.cluster, replicated.direct):
        wait_for_no_sessions(server, "my_app_tom")
    with (
        Client(connect_as(project, "my_app_tom", replicated.direct), keep=True, interval=0.2),
        Client(connect_as(project, "my_app_tom"), keep=True, interval=0.2),
    ):
        proc = project.rolekit("status", "--context", "dev", "--json")
    tom = next(
        m for m in json.loads(proc.stdout)["families"][0]["members"] if m["name"] == "my_app_tom"
    )
    places = {p["place"]: p for p in tom["places"]}
    primary = f"primary {project.cluster.host}:{project.cluster.port}/postgres"
    direct = f"replica {replicated.direct.host}:{replicated.direct.port}/postgres"
    cascade = f"replica {replicated.cascade.host}:{replicated.cascade.port}/postgres"
    assert places.keys() == {primary, direct, cascade}
    assert [places[k]["sessions"] for k in (primary, direct, cascade)] == [1, 1, 0]
    assert [places[k]["kind"] for k in (primary, direct, cascade)] == [
        "primary",
        "replica",
        "replica",
    ]
    assert places[direct]["last_seen"] is not None and places[cascade]["last_seen"] is None
    # create_role_family lets the migrator see its members' sessions in detail
    assert places[direct]["sessions_hidden"] == 0


def test_an_unreachable_pooler_does_not_fail_a_begin_that_only_waits_for_replay(
    deployed_project: Project, replicated: Replicated
) -> None:
    """After a commit no drain preceded, rolekit waits for the replicas only: the
    poolers are watched by a drain, and an unreachable one must not fail (exit 5)
    a migration that committed.  The finish, which drains, still refuses it."""
    project = deployed_project
    may_identify_standbys(project, replicated)
    project.extra_env["ROLEKIT_REPLICAS"] = replica_urls(replicated.direct, replicated.cascade)
    project.upgrade("dev")
    project.extra_env["ROLEKIT_POOLERS"] = "postgresql://admin:wrong@127.0.0.1:1/pgbouncer"
    begin = rotate(project, "begin")
    for standby in (replicated.direct, replicated.cascade):
        assert f"replicas: replica {standby.host}:{standby.port}/postgres replayed" in begin.stderr
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}
    proc = rotate(project, "finish", "--drain-timeout", "3", check=False)
    assert proc.returncode == 5 and "cannot reach pooler 127.0.0.1:1" in proc.stderr


def _refused(project: Project, *expected: str) -> None:
    """finish is refused with *expected* in its message, and changes nothing."""
    before, state = role_snapshot(project.cluster), project.state()
    proc = rotate(project, "finish", "--drain-timeout", "5", check=False)
    assert proc.returncode == 3, proc.stderr
    for text in (*expected, "nothing was changed"):
        assert text in proc.stderr, proc.stderr
    assert role_snapshot(project.cluster) == before
    assert project.state() == state


@pytest.fixture
def siblings(pg_major: int) -> Iterator[Replicated]:
    """A primary with two standbys streaming from it (``cascade`` is the second
    direct one here)."""
    with Cluster(pg_major) as primary:
        first = primary.standby()
        try:
            second = primary.standby()
            try:
                yield Replicated(primary, first, second)
            finally:
                second.cleanup()
        finally:
            first.cleanup()


@pytest.mark.parametrize("user", ["superuser", "createrole"])
def test_a_standby_listed_twice_does_not_hide_another(
    siblings: Replicated, tmp_path: Path, user: str
) -> None:
    """Finding 4 of issue 23: two standbys stream from the primary and the first is
    listed twice (another database on the same server): 2 WAL senders <= 2
    entries passed and the second standby went unwatched."""
    credentials = {}
    if user == "createrole":
        migrator, secret = siblings.primary.create_migrator()
        credentials = {"user": migrator, "password": secret}
        siblings.sync()
    project = example_project(tmp_path, siblings.primary, **credentials)
    first = f"postgresql://{siblings.direct.host}:{siblings.direct.port}"
    twice = f"{first}/postgres, {first}/template1"
    project.extra_env["ROLEKIT_REPLICAS"] = twice
    project.upgrade("dev")
    rotate(project, "begin")
    second = f"(standby_{siblings.cascade.port}) via primary "
    _refused(project, "2 streaming standby(s) replicate this database", second)
    may_identify_standbys(project, siblings)
    _refused(project, "but 1 replica(s) are configured", second)
    # listing the second standby too is correct; the duplicate is watched once
    project.extra_env["ROLEKIT_REPLICAS"] = f"{twice}, {replica_urls(siblings.cascade)}"
    finish = rotate(project, "finish", "--drain-timeout", "30")
    assert "(also listed as replica " in finish.stderr, finish.stderr
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_a_cascaded_standby_alone_does_not_stand_for_its_upstream(
    deployed_project: Project, replicated: Replicated
) -> None:
    """Finding 4 of issue 23: primary -> direct -> cascade with only the cascade
    configured counted one sender for one replica, and the direct standby's
    readers were locked out unseen."""
    project = deployed_project
    project.extra_env["ROLEKIT_REPLICAS"] = replica_urls(replicated.cascade)
    project.upgrade("dev")
    rotate(project, "begin")
    if is_migrator(project):  # without the details no sender can be matched: fail closed
        _refused(
            project, f"{project.user} may not read ", f"GRANT pg_read_all_stats TO {project.user}"
        )
        may_identify_standbys(project, replicated)
    primary = f"via primary {project.cluster.host}:{project.cluster.port}/postgres"
    _refused(
        project,
        f"127.0.0.1 (standby_{replicated.direct.port}) {primary}), which no configured replica is",
    )
    project.extra_env["ROLEKIT_REPLICAS"] = replica_urls(replicated.direct, replicated.cascade)
    rotate(project, "finish", "--drain-timeout", "30")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
