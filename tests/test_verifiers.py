"""Verifiers derived one ahead on a second connection (rolekit.pg.verifiers)."""

from __future__ import annotations

import re
from typing import Any

import psycopg2
from psycopg2 import sql

from rolekit.pg.verifiers import Ahead
from rolekit.secrets import Secret, generate_password
from rolekit.testing import Cluster, Project
from tests.reliability.helpers import assert_logins, login_works

SCRAM = re.compile(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


def _roles(cluster: Cluster, n: int) -> list[tuple[str, Secret]]:
    pending = [(f"ahead_{i}", Secret(generate_password())) for i in range(n)]
    with cluster.connect() as conn, conn.cursor() as cur:
        for role, _ in pending:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    return pending


def _apply(ahead: Ahead, main: Any, order: list[tuple[str, Secret]]) -> None:
    with main.cursor() as cur:
        for role, secret in order:
            verifier = ahead.take(role, secret, main)
            assert SCRAM.fullmatch(verifier)
            stmt = sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role))
            ahead.start_next()
            cur.execute(stmt, (verifier,))


def test_verifiers_derived_ahead_are_the_ones_the_server_accepts(cluster: Cluster) -> None:
    pending = _roles(cluster, 10)
    main = cluster.connect()
    ahead = Ahead(pending, cluster.connect, main.get_parameter_status("scram_iterations"))
    try:
        # one asked for out of turn and one skipped: each still gets its own verifier
        order = [pending[0], pending[2], pending[1], *pending[3:7], *pending[8:]]
        _apply(ahead, main, order)
    finally:
        ahead.close()
        main.close()
    assert [login_works(cluster, r, s.reveal()) for r, s in order] == [True] * len(order)
    assert not login_works(cluster, pending[7][0], pending[7][1].reveal())


def test_in_turn_most_verifiers_come_from_the_worker(cluster: Cluster) -> None:
    """The first few are derived on the main connection while the worker connects;
    from then on each is the worker's."""
    pending = _roles(cluster, 16)
    main = cluster.connect()
    ahead = Ahead(pending, cluster.connect, main.get_parameter_status("scram_iterations"))
    try:
        _apply(ahead, main, pending)
        assert ahead.taken_ahead >= 8, ahead.taken_ahead
    finally:
        ahead.close()
        main.close()
    assert all(login_works(cluster, r, s.reveal()) for r, s in pending)


def test_without_a_second_connection_each_is_derived_on_the_main_one(cluster: Cluster) -> None:
    pending = _roles(cluster, 4)

    def refused() -> Any:
        raise psycopg2.OperationalError("no more connections")

    main = cluster.connect()
    for ahead in (
        Ahead(pending, refused, main.get_parameter_status("scram_iterations")),
        # a second connection that would derive with another iteration count
        Ahead(pending, cluster.connect, "8192"),
    ):
        try:
            _apply(ahead, main, pending)
            assert ahead.taken_ahead == 0
        finally:
            ahead.close()
        assert all(login_works(cluster, r, s.reveal()) for r, s in pending)
    main.close()


def test_an_upgrade_setting_many_passwords_logs_each_member_in(any_project: Project) -> None:
    """Enough passwords for the second connection, with either kind of migration user;
    rolekit logs in as every member after the commit, so a wrong verifier fails it."""
    any_project.add_families([f"svc{i}" for i in range(5)])
    rows = any_project.query(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'svc%%' AND rolcanlogin"
    )
    assert rows == [(5,)]
    assert_logins(any_project)
