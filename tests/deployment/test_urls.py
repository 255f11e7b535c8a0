"""URLs whose password SQLAlchemy would split wrongly are refused, quoting nothing.

SQLAlchemy ends a URL's password at its first ``@``: in
``postgresql://u:Zq9-s3cr3t@vault@host/db`` it reads the password ``Zq9-s3cr3t``
and the host ``vault@host``, and every message naming the host then showed
part of the password (issue 23, finding 11).  A port that is not a number
ended, for a pooler, in a traceback quoting the rest of the URL.
"""

from __future__ import annotations

import pytest

from rolekit.testing import Project

#: every piece of the password; none may appear in any output
FRAGMENTS = ("Zq9", "s3cr3t", "vault")


def _at_in_password(host: str, port: object, db: str = "postgres") -> str:
    return f"postgresql://postgres:Zq9-s3cr3t@vault@{host}:{port}/{db}"


def _assert_quiet(output: str) -> None:
    assert "Traceback" not in output, output
    for fragment in FRAGMENTS:
        assert fragment not in output, f"{fragment!r} leaked:\n{output}"


def _assert_refused_quietly(output: str, where: str, code: int, expected: int | None = 2) -> None:
    """Refused (exit *expected*, or any failure for ``None``), naming *where*, quoting nothing."""
    assert code == expected if expected is not None else code != 0, output
    assert f"a URL in {where} holds more than one '@'" in output, output
    assert "percent-encode '@' as %40" in output, output
    _assert_quiet(output)


def _can_login(project: Project) -> list[list[object]]:
    query = "SELECT json_agg(json_build_array(rolname, rolcanlogin) ORDER BY rolname)"
    rows: list[list[object]] = project.cluster.query_one(
        f"{query} FROM pg_roles WHERE rolname ~ '^my_app'"
    )
    return rows


def test_a_database_url_with_an_unencoded_at_is_refused(project: Project) -> None:
    project.extra_env["DATABASE_URL"] = _at_in_password(project.cluster.host, project.cluster.port)
    where = "DATABASE_URL or sqlalchemy.url"
    status = project.rolekit("status", "--context", "dev", check=False)
    _assert_refused_quietly(status.stdout + status.stderr, where, status.returncode)
    upgrade = project.upgrade("dev", check=False)
    output = upgrade.stdout + upgrade.stderr
    assert f"FAILED: a URL in {where} holds more than one '@'" in output
    _assert_refused_quietly(output, where, upgrade.returncode, expected=None)
    # nothing ran: the migration's roles were never created
    assert _can_login(project) is None


def test_a_database_url_with_a_port_that_is_no_number_is_refused(project: Project) -> None:
    project.extra_env["DATABASE_URL"] = "postgresql://postgres:Zq9-s3cr3t@127.0.0.1:vault/postgres"
    status = project.rolekit("status", "--context", "dev", check=False)
    output = status.stdout + status.stderr
    assert status.returncode == 2, output
    assert (
        "a URL in DATABASE_URL or sqlalchemy.url is not a postgresql://host:port/db URL: "
        "its port is not a number" in output
    ), output
    _assert_quiet(output)


def test_a_replica_url_with_an_unencoded_at_is_refused(project: Project) -> None:
    project.upgrade("dev")
    # port 1: on the base commit rolekit tried to reach host "vault@127.0.0.1"
    project.extra_env["ROLEKIT_REPLICAS"] = _at_in_password("127.0.0.1", 1)
    where = "[rolekit] replicas (ROLEKIT_REPLICAS)"
    status = project.rolekit("status", "--context", "dev", check=False)
    _assert_refused_quietly(status.stdout + status.stderr, where, status.returncode)
    # the begin is refused before its change, not after a commit it cannot replay
    project.rolekit("rotate", "my_app", "begin", "--context", "dev")
    before = _can_login(project)
    upgrade = project.upgrade("dev", check=False)
    output = upgrade.stdout + upgrade.stderr
    assert f"FAILED: a URL in {where} holds more than one '@'" in output
    _assert_refused_quietly(output, where, upgrade.returncode, expected=None)
    assert _can_login(project) == before


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:Zq9-s3cr3t@vault@127.0.0.1:1/pgbouncer",
        "postgresql://admin:Zq9-s3cr3t@127.0.0.1:vault/pgbouncer",
    ],
    ids=["at", "port"],
)
def test_a_pooler_url_that_cannot_be_parsed_is_refused(project: Project, url: str) -> None:
    project.upgrade("dev")
    project.extra_env["ROLEKIT_POOLERS"] = url
    status = project.rolekit("status", "--context", "dev", check=False)
    output = status.stdout + status.stderr
    assert status.returncode == 2, output
    assert "a URL in [rolekit] poolers (ROLEKIT_POOLERS)" in output, output
    assert "percent-encode '@' as %40" in output, output
    _assert_quiet(output)
