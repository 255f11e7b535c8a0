"""Tests of the throwaway PostgreSQL clusters every other test runs on.

If the sandbox let a connection in without the right password, or lost
statements from its log, the rotation tests built on it would prove nothing.
These pin its guarantees down for every major the suite runs on, i.e.
``ROLEKIT_PG_VERSIONS`` (default ``15``) plus ``ROLEKIT_COMPAT_VERSIONS``;
fetch the non-system ones with ``scripts/fetch_pg.py``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from rolekit.testing import Cluster, find_bindir
from rolekit.testing import cluster as sandbox

_WANTED = (
    os.environ.get("ROLEKIT_PG_VERSIONS", "15")
    + " "
    + os.environ.get("ROLEKIT_COMPAT_VERSIONS", "")
)
MAJORS = sorted({int(v) for v in _WANTED.split()})


@pytest.fixture(scope="module", params=MAJORS, ids=lambda major: f"pg{major}")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One cluster per major for the whole module: starting one costs ~1 s."""
    try:
        find_bindir(request.param)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with Cluster(request.param) as started:
        yield started


def scalar(cluster: Cluster, query: str, *params: Any, **connect: Any) -> Any:
    """First column of the first row of *query*, on a fresh connection."""
    conn = cluster.connect(**connect)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_right_password_connects(cluster: Cluster) -> None:
    assert scalar(cluster, "SELECT current_user") == cluster.superuser


def test_wrong_password_is_refused(cluster: Cluster) -> None:
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        cluster.connect(password=cluster.superuser_password + "x")


def test_unix_socket_also_needs_the_password(cluster: Cluster) -> None:
    sockets = scalar(cluster, "SHOW unix_socket_directories")
    assert scalar(cluster, "SELECT 1", host=sockets) == 1
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        cluster.connect(password="wrong", host=sockets)


def test_hba_has_scram_only(cluster: Cluster) -> None:
    rules = "SELECT array_agg(DISTINCT auth_method) FROM pg_hba_file_rules"
    assert scalar(cluster, rules) == ["scram-sha-256"]
    errors = "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL"
    assert scalar(cluster, errors) == 0


def test_settings(cluster: Cluster) -> None:
    expected = {
        "log_statement": "all",
        "log_connections": "on",
        "password_encryption": "scram-sha-256",
        "listen_addresses": "127.0.0.1",
        "port": str(cluster.port),
        "max_connections": "200",
        "fsync": "off",
    }
    conn = cluster.connect()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(expected),))
        actual = dict(cur.fetchall())
    conn.close()
    assert actual == expected


def test_statements_reach_the_log(cluster: Cluster) -> None:
    marker = secrets.token_hex(8)
    offset = cluster.log_size()
    assert scalar(cluster, "SELECT %s", marker) == marker
    assert marker in cluster.log_since(offset)
    assert marker not in cluster.log_text()[:offset]


def test_server_version_matches_major(cluster: Cluster) -> None:
    version = int(scalar(cluster, "SHOW server_version_num"))
    assert version // 10000 == cluster.major


def test_restart_keeps_data(cluster: Cluster) -> None:
    started = scalar(cluster, "SELECT pg_postmaster_start_time()")
    scalar(cluster, "CREATE TABLE IF NOT EXISTS kept () ; SELECT 1")
    cluster.restart()
    assert scalar(cluster, "SELECT pg_postmaster_start_time()") > started
    assert scalar(cluster, "SELECT to_regclass('kept') IS NOT NULL")


def test_create_migrator(cluster: Cluster) -> None:
    """The least-privileged migration user the README documents."""
    offset = cluster.log_size()
    name, password = cluster.create_migrator()
    rights = """SELECT rolsuper, rolcreaterole, rolcanlogin,
        pg_has_role(rolname, 'pg_signal_backend', 'MEMBER'),
        pg_has_role(rolname, 'pg_read_all_stats', 'MEMBER'),
        has_database_privilege(rolname, 'postgres', 'CREATE'),
        has_schema_privilege(rolname, 'public', 'CREATE'),
        (SELECT datdba = r.oid FROM pg_database WHERE datname = 'postgres')
        FROM pg_roles r WHERE rolname = %s"""
    assert scalar(cluster, f"SELECT ROW(r.*)::text FROM ({rights}) r", name) == "(f,t,t,f,f,t,t,t)"
    assert scalar(cluster, "SELECT current_user", user=name, password=password) == name
    logged = cluster.log_since(offset)
    assert "SCRAM-SHA-256$" in logged
    assert password not in logged
    assert cluster.superuser_password not in cluster.log_text()


def test_quoting_of_odd_names_and_passwords(cluster: Cluster) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    name, password = cluster.create_migrator("odd user'\\@:/", 'it\'s a \\ "pw" @:/%?#')
    assert scalar(cluster, "SELECT current_user", user=name, password=password) == name
    url = sqlalchemy.make_url(cluster.url(name, password))
    assert (url.username, url.password, url.port) == (name, password, cluster.port)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == name


def test_lifecycle_and_port_retry() -> None:
    """A taken port is retried, cleanup leaves nothing, and is safe to repeat."""
    cluster = Cluster()
    with socket.socket() as squatter:
        squatter.bind((cluster.host, cluster.port))
        squatter.listen()
        taken = cluster.port
        with cluster:
            assert cluster.port != taken
            assert scalar(cluster, "SELECT 1") == 1
            if os.geteuid() == 0:  # PostgreSQL refuses root; it must run as postgres
                owner = (cluster.datadir / "postmaster.pid").stat().st_uid
                assert owner == pwd.getpwnam("postgres").pw_uid
    assert not cluster.datadir.exists()
    assert cluster not in sandbox._LIVE
    cluster.stop()
    cluster.cleanup()
    with pytest.raises(psycopg2.OperationalError):
        cluster.connect(connect_timeout=2)
