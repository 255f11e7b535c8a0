"""rolekit.pg.catalog.roles reads a few roles and many roles with two queries: they agree."""

from __future__ import annotations

from psycopg2 import sql

from rolekit.pg import catalog
from rolekit.pg.catalog import PG16, RoleInfo
from rolekit.pg.control import ControlConnection
from rolekit.testing import Cluster

SETUP = [
    "CREATE ROLE grp NOLOGIN",
    "CREATE ROLE other_grp NOLOGIN",
    "CREATE ROLE plain LOGIN VALID UNTIL 'infinity'",
    "CREATE ROLE expired LOGIN VALID UNTIL '2001-01-01'",
    "CREATE ROLE later NOLOGIN SUPERUSER REPLICATION BYPASSRLS VALID UNTIL '2999-01-01'",
    "CREATE ROLE member_a NOLOGIN",
    "CREATE ROLE member_b NOLOGIN",
    "GRANT grp TO member_a",
    "GRANT other_grp TO member_a WITH ADMIN OPTION",
    "GRANT grp TO member_b",
    "ALTER ROLE member_a SET role = grp",
    "ALTER ROLE member_a SET work_mem = '8MB'",
    "ALTER ROLE member_b IN DATABASE postgres SET role = other_grp",
    "ALTER ROLE member_b IN DATABASE template1 SET search_path = public",
    "COMMENT ON ROLE member_a IS 'kept text\nrolekit: managed from database \"postgres\"'",
]
PG16_SETUP = ["GRANT other_grp TO member_b WITH INHERIT FALSE, SET FALSE"]
NAMES = ["grp", "other_grp", "plain", "expired", "later", "member_a", "member_b", "absent"]


def _comparable(roles: dict[str, RoleInfo]) -> dict[str, RoleInfo]:
    # the order of the groups and of the per-database settings is the server's
    return {n: r._replace(member_of=tuple(sorted(r.member_of))) for n, r in roles.items()}


def test_few_and_many_roles_read_the_same(cluster: Cluster) -> None:
    with cluster.connect() as conn, conn.cursor() as cur:
        version = conn.server_version
        for stmt in SETUP + (PG16_SETUP if version >= PG16 else []):
            cur.execute(stmt)
        reader = ControlConnection(conn)
        for names in (NAMES, NAMES[:3], ["member_a"], ["member_b", "absent"], ["absent"]):
            few, many = (
                catalog.roles_from_rows(
                    reader.fetchall(
                        catalog._roles_query(version, count, sql.Literal(names), "'role=%'")
                    )
                )
                for count in (1, catalog.FEW_ROLES + 1)
            )
            assert _comparable(few) == _comparable(many), names
            assert _comparable(catalog.roles(reader, names)) == _comparable(few)
        roles = catalog.roles(reader, NAMES)
        assert "absent" not in roles
        assert roles["member_a"].login_role == "grp"
        assert roles["member_a"].settings == ("role=grp", "work_mem=8MB")
        assert roles["member_b"].database_login_roles == {"postgres": "other_grp"}
        assert roles["expired"].expired and not roles["plain"].expired
        assert roles["plain"].valid_until is None
        assert {m.group for m in roles["member_a"].member_of} == {"grp", "other_grp"}
