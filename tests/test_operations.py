"""op.create_role_family / op.drop_role_family on real servers."""

from __future__ import annotations

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from rolekit.testing import Cluster, Project
from tests.catalog_snapshot import family_rows, role_snapshot

MEMBERS = ("my_app_jerry", "my_app_tom")


def enable_login(cluster: Cluster, role: str, password: str) -> None:
    """What a rotation does, done by hand so this file tests only the operations."""
    with cluster.connect() as conn, conn.cursor() as cur:
        verifier = encrypt_password(password, role, conn, "scram-sha-256")
        cur.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (verifier,)
        )


@pytest.mark.compat
def test_upgrade_creates_family_and_downgrade_removes_every_trace(any_project: Project) -> None:
    cluster = any_project.cluster
    before = role_snapshot(cluster)
    any_project.upgrade()
    rows = family_rows(cluster)
    assert rows["roles"] == {
        "my_app": {"login": False, "super": False},
        "my_app_jerry": {"login": False, "super": False},
        "my_app_tom": {"login": False, "super": False},
    }
    # Both members are in the group with INHERIT and SET (16+ has the options).
    assert rows["members"]["my_app_tom"] == {"inherit": True, "set": True}
    assert rows["members"]["my_app_jerry"] == {"inherit": True, "set": True}
    assert rows["settings"] == {"my_app_tom": ["role=my_app"], "my_app_jerry": ["role=my_app"]}

    any_project.downgrade()
    assert role_snapshot(cluster) == before


@pytest.mark.compat
def test_member_logs_in_as_group_and_its_tables_belong_to_group(any_project: Project) -> None:
    cluster = any_project.cluster
    any_project.upgrade()
    enable_login(cluster, "my_app_tom", "tom-password-long-enough")
    with cluster.connect("my_app_tom", "tom-password-long-enough") as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, session_user")
        assert cur.fetchone() == ("my_app", "my_app_tom")
        cur.execute("CREATE TABLE my_schema.orders (id int)")
    owner = any_project.query(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'my_schema' AND tablename = 'orders'"
    )
    assert owner == [("my_app",)]
    # downgrade reassigns the table away and drops the schema: no trace left.
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("ALTER ROLE my_app_tom NOLOGIN")
    any_project.downgrade()
    assert any_project.query("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'my_app%%'") == [
        (0,)
    ]


@pytest.mark.compat
def test_password_auth_is_enforced(project: Project) -> None:
    project.upgrade()
    enable_login(project.cluster, "my_app_tom", "right-password-123456")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        project.cluster.connect("my_app_tom", "wrong-password-123456")
    # jerry has neither LOGIN nor a password
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        project.cluster.connect("my_app_jerry", "any-password-123456")


def test_upgrade_is_idempotent_over_partial_family(any_project: Project) -> None:
    cluster = any_project.cluster
    # A partial family made by the same migration user (say, by hand).
    any_project.query(
        "CREATE ROLE my_app NOLOGIN; CREATE ROLE my_app_tom NOLOGIN IN ROLE my_app",
        as_migrator=True,
    )
    any_project.upgrade()
    rows = family_rows(cluster)
    assert set(rows["roles"]) == {"my_app", "my_app_tom", "my_app_jerry"}
    assert rows["settings"] == {"my_app_tom": ["role=my_app"], "my_app_jerry": ["role=my_app"]}
    assert rows["members"]["my_app_tom"] == {"inherit": True, "set": True}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("CREATE ROLE my_app LOGIN", "group role 'my_app' can log in"),
        ("CREATE ROLE my_app SUPERUSER NOLOGIN", "group role 'my_app' is a superuser"),
        (
            "CREATE ROLE my_app_tom NOLOGIN",
            "member role 'my_app_tom' exists but is not a member of 'my_app'",
        ),
        (
            "CREATE ROLE my_app NOLOGIN; CREATE ROLE other NOLOGIN;"
            " CREATE ROLE my_app_jerry IN ROLE my_app, other; ALTER ROLE my_app_jerry SET role = other",
            "member role 'my_app_jerry' has 'SET role = other'",
        ),
    ],
)
def test_conflicting_roles_fail_clearly_and_change_nothing(
    project: Project, setup: str, message: str
) -> None:
    cluster = project.cluster
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute(setup)
    before = role_snapshot(cluster)
    proc = project.upgrade(check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert role_snapshot(cluster) == before
    assert project.query("SELECT to_regclass('alembic_version')") == [(None,)]


@pytest.mark.compat
@pytest.mark.since(16)  # membership options exist from PostgreSQL 16
def test_pg16_membership_without_set_is_repaired(project: Project) -> None:
    cluster = project.cluster
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE ROLE my_app NOLOGIN")
        cur.execute("CREATE ROLE my_app_tom NOLOGIN")
        cur.execute("GRANT my_app TO my_app_tom WITH INHERIT TRUE, SET FALSE")
        cur.execute("ALTER ROLE my_app_tom SET role = my_app")
    project.upgrade()
    assert family_rows(cluster)["members"]["my_app_tom"] == {"inherit": True, "set": True}
    enable_login(cluster, "my_app_tom", "tom-password-long-enough")
    with cluster.connect("my_app_tom", "tom-password-long-enough") as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("my_app",)


def test_drop_refuses_while_members_have_sessions(project: Project) -> None:
    cluster = project.cluster
    project.upgrade()
    enable_login(cluster, "my_app_tom", "tom-password-long-enough")
    app = cluster.connect("my_app_tom", "tom-password-long-enough")
    try:
        before = role_snapshot(cluster)
        proc = project.downgrade(check=False)
        assert proc.returncode != 0
        assert "members have live sessions (my_app_tom: 1)" in proc.stderr
        assert role_snapshot(cluster) == before
        project.downgrade(x={"terminate": "true"})
        assert project.query("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'my_app%%'") == [
            (0,)
        ]
    finally:
        app.close()


def test_grant_via_op_execute_in_same_revision(project: Project) -> None:
    (project.root / "migrations" / "versions" / "0003_grant.py").write_text(
        '"""grant"""\nfrom alembic import op\nrevision = "0003"\ndown_revision = "0002"\n'
        "def upgrade():\n"
        '    op.create_role_family("reporting", ["reporting_a", "reporting_b"])\n'
        '    op.execute("CREATE TABLE my_schema.report (id int)")\n'
        '    op.execute("GRANT SELECT ON my_schema.report TO reporting")\n'
        "def downgrade():\n"
        '    op.execute("DROP TABLE my_schema.report")\n'
        '    op.drop_role_family("reporting", ["reporting_a", "reporting_b"])\n'
    )
    project.upgrade()
    assert project.query(
        "SELECT has_table_privilege('reporting', 'my_schema.report', 'SELECT')"
    ) == [(True,)]
    project.downgrade()
    assert project.query("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'reporting%%'") == [(0,)]


def test_offline_sql_renders_script_for_target_version(project: Project) -> None:
    out = project.alembic("upgrade", "head", "--sql", x={"pg_version": "16"}).stdout
    assert 'CREATE ROLE "my_app" NOLOGIN;' in out
    assert 'GRANT "my_app" TO "my_app_tom" WITH INHERIT TRUE, SET TRUE;' in out
    assert 'ALTER ROLE "my_app_tom" SET role = "my_app";' in out
    out15 = project.alembic("upgrade", "head", "--sql", x={"pg_version": "15"}).stdout
    assert 'GRANT "my_app" TO "my_app_tom";' in out15
    proc = project.alembic("upgrade", "head", "--sql", check=False)
    assert proc.returncode != 0 and "-x pg_version=" in proc.stderr


def test_existing_role_the_migrator_cannot_administer_is_a_clear_conflict(
    managed_project: Project,
) -> None:
    cluster = managed_project.cluster
    managed_project.query("CREATE ROLE my_app NOLOGIN")  # made by another admin
    before = role_snapshot(cluster)
    proc = managed_project.upgrade(check=False)
    if cluster.major < 16:
        # Before 16, CREATEROLE may grant any non-superuser role.
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "has no ADMIN OPTION on existing role 'my_app'" in proc.stderr
    assert role_snapshot(cluster) == before
