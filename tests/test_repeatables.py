"""Run-on-change repeatables, the changelog and contexts, on real servers."""

from __future__ import annotations

import re
import sys

import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot


def statements(log: str) -> list[str]:
    return re.findall(r"statement: (.*)", log)


def history(project: Project) -> list[tuple[str, str]]:
    return project.query("SELECT id, exec_type FROM rolekit_changelog_history ORDER BY seq")


def test_no_context_runs_no_context_tagged_repeatable(project: Project) -> None:
    proc = project.upgrade()
    assert "skipped set_passwords_dev: no context given; 'dev or local' needs one" in proc.stderr
    assert "skipped set_passwords_prod: no context given" in proc.stderr
    assert "skipped allow_login_for_my_app: no context given" in proc.stderr
    assert history(project) == [("grant_permissions_to_my_app", "executed")]
    assert project.query(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'my_app%%' AND rolcanlogin"
    ) == [(0,)]


def test_context_from_environment_variable(project: Project) -> None:
    project.alembic("upgrade", "head", ROLEKIT_CONTEXT="dev")
    assert ("set_passwords_dev", "executed") in history(project)
    assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'") == [
        (True,)
    ]


def test_second_identical_upgrade_sends_no_alter_role_or_grant(any_project: Project) -> None:
    any_project.upgrade("dev")
    # A least-privileged migrator's statements are not logged (as on a managed
    # service); log the no-op's, which carry no verifier.
    any_project.query(f"ALTER ROLE \"{any_project.user}\" SET log_statement = 'all'")
    offset = any_project.cluster.log_size()
    any_project.upgrade("dev")
    sent = statements(any_project.cluster.log_since(offset))
    assert sent, "the server log should show the no-op run's reads"
    assert not [s for s in sent if re.match(r"\s*(ALTER ROLE|GRANT|CREATE|INSERT)", s, re.I)]


def test_changing_one_password_reruns_only_its_repeatable(project: Project) -> None:
    project.upgrade("dev")
    before = len(history(project))
    project.set_password("my_app_jerry", "dev")
    proc = project.upgrade("dev")
    assert history(project)[before:] == [("set_passwords_dev", "reran")]
    assert "running set_passwords_dev (changed: its checksum changed)" in proc.stderr


def test_rerun_sets_only_the_password_that_changed(project: Project) -> None:
    project.upgrade("dev")
    verifier = "SELECT rolpassword FROM pg_authid WHERE rolname = 'my_app_tom'"
    tom_before = project.query(verifier)
    project.set_password("my_app_jerry", "dev")
    proc = project.upgrade("dev")
    assert "ALTER ROLE my_app_jerry PASSWORD <redacted>" in proc.stderr
    # The member in use keeps its verifier: caches of it (PgBouncer) stay valid.
    assert "ALTER ROLE my_app_tom PASSWORD" not in proc.stderr
    assert project.query(verifier) == tom_before


def test_reformatting_source_does_not_rerun_but_a_changed_statement_does(project: Project) -> None:
    project.upgrade("dev")
    source = (project.root / "migrations/repeatable/my_app.py").read_text()
    project.write_repeatables("# reformatted\n\n" + source.replace("MEMBERS = [", "MEMBERS  =  [ "))
    grants = project.root / "migrations/repeatable/my_app_grants.sql"
    count = len(history(project))
    project.upgrade("dev")
    assert len(history(project)) == count
    # Repeatables run at head: no revision is pending here.
    grants.write_text(grants.read_text() + "GRANT TEMPORARY ON DATABASE postgres TO my_app;\n")
    project.upgrade("dev")
    assert history(project)[count:] == [("grant_permissions_to_my_app", "reran")]
    assert project.query("SELECT has_database_privilege('my_app', 'postgres', 'TEMPORARY')") == [
        (True,)
    ]


def test_rerun_of_an_unknown_id_is_refused_listing_the_known_ones(any_project: Project) -> None:
    """``-x rerun=`` with a typo did nothing and said nothing (issue 23, finding 17); it is
    refused before anything runs, like ``clear-checksums`` refuses the same typo."""
    project = any_project
    project.upgrade("dev")
    seen = history(project)
    (head,) = project.query("SELECT version_num FROM alembic_version")[0]
    project.add_revision("rerun_probe", head, "op.execute('SELECT 1')", "pass")
    typo = "grant_permisions_to_my_app"
    proc = project.alembic(
        "upgrade", "head", context="dev", x={"rerun": f"{typo},set_passwords_dev"}, check=False
    )
    assert proc.returncode != 0
    assert f"-x rerun: no repeatable has the id '{typo}'; nothing was done" in proc.stderr
    known = re.search(r"\(known: ([^)]*)\)", proc.stderr)
    assert known is not None, proc.stderr
    assert {"grant_permissions_to_my_app", "set_passwords_dev"} <= set(known[1].split(", "))
    assert "Traceback" not in proc.stderr
    assert history(project) == seen
    assert project.query("SELECT version_num FROM alembic_version") == [(head,)]
    # the same typo for clear-checksums names the same known ids, by the same rule
    cleared = project.rolekit("clear-checksums", typo, check=False)
    assert cleared.returncode == 2
    assert f"no changelog entry for '{typo}'; nothing was cleared (known: " in cleared.stderr


def test_run_always_runs_every_time(project: Project) -> None:
    project.write_repeatables(
        "from rolekit.repeatable import Sql\n"
        "REPEATABLES = [Sql('analyze', 'ANALYZE pg_catalog.pg_class', run_always=True)]\n",
        name="zz_always.py",
    )
    project.upgrade("dev")
    project.upgrade("dev")
    assert [h for h in history(project) if h[0] == "analyze"] == [
        ("analyze", "executed"),
        ("analyze", "reran"),
    ]


def test_changelog_rows_are_complete_and_history_is_append_only(project: Project) -> None:
    project.upgrade("dev")
    rows = project.query(
        "SELECT id, length(checksum), context_expression, context_used, exec_type,"
        " applied_by, duration_ms >= 0 FROM rolekit_changelog ORDER BY id"
    )
    assert ("set_passwords_dev", 64, "dev or local", "dev", "executed", "postgres", True) in rows
    import psycopg2

    with pytest.raises(psycopg2.Error, match="append-only"):
        project.query("DELETE FROM rolekit_changelog_history")


@pytest.mark.parametrize(
    ("expression", "where"),
    [("dev and (prod", "position"), ("dev or", "position"), ("", "empty")],
)
def test_invalid_context_expression_fails_before_anything_runs(
    project: Project, expression: str, where: str
) -> None:
    project.write_repeatables(
        f"from rolekit.repeatable import Sql\nREPEATABLES = [Sql('x', 'SELECT 1', context={expression!r})]\n",
        name="bad.py",
    )
    before = role_snapshot(project.cluster)
    proc = project.upgrade("dev", check=False)
    assert proc.returncode != 0
    assert "invalid context expression" in proc.stderr and where in proc.stderr
    assert "Traceback" not in proc.stderr
    assert role_snapshot(project.cluster) == before


def test_unknown_role_and_duplicate_id_are_refused(project: Project) -> None:
    project.write_repeatables(
        "from rolekit.repeatable import SetLogin\nREPEATABLES = [SetLogin('ghost', {'nobody_here': False})]\n",
        name="ghost.py",
    )
    proc = project.upgrade("dev", check=False)
    assert "targets role(s) nobody_here that do not exist" in proc.stderr
    assert project.query("SELECT to_regclass('alembic_version')") == [(None,)]
    project.write_repeatables(
        "from rolekit.repeatable import Sql\nREPEATABLES = [Sql('set_passwords_dev', 'SELECT 1')]\n",
        name="ghost.py",
    )
    proc = project.upgrade("dev", check=False)
    assert "duplicate repeatable id 'set_passwords_dev' in my_app.py and ghost.py" in proc.stderr


def test_failing_repeatable_rolls_back_everything(project: Project) -> None:
    project.upgrade("dev")
    before_roles, before_history = role_snapshot(project.cluster), history(project)
    project.set_password("my_app_tom", "dev")  # would re-run set_passwords_dev first
    project.write_repeatables(
        "from rolekit.repeatable import Sql\n"
        "REPEATABLES = [Sql('boom', 'ALTER ROLE my_app NOLOGIN; SELECT 1/0', targets=['my_app'])]\n",
        name="zz_boom.py",
    )
    proc = project.upgrade("dev", check=False)
    assert proc.returncode != 0 and "division by zero" in proc.stderr
    assert role_snapshot(project.cluster) == before_roles
    assert history(project) == before_history


def test_older_changelog_schema_is_migrated(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    # what a database upgraded by rolekit 0.1 holds: none of the later tables
    project.query("ALTER TABLE rolekit_changelog DROP COLUMN target_oids")
    project.query(
        "DROP TABLE rolekit_rotation, rolekit_rotation_history, rolekit_password_history;"
        " DROP FUNCTION rolekit_append_only();"
        " DELETE FROM rolekit_meta WHERE key = 'password_history_key'"
    )
    project.query("UPDATE rolekit_meta SET value = '1' WHERE key = 'schema_version'")
    project.set_password("my_app_tom", "dev")
    project.upgrade("dev")
    assert project.query("SELECT value FROM rolekit_meta WHERE key = 'schema_version'") == [("5",)]
    # the migrated changelog has no digests yet: both passwords were sent, and
    # recorded with the digests of their verifiers where the migrator may read
    # pg_authid (a superuser; the least-privileged one records none)
    digest = True if project.user == project.cluster.superuser else None
    assert project.query(
        "SELECT role, verifier ~ '^[0-9a-f]{64}$' FROM rolekit_password_history ORDER BY 1"
    ) == [("my_app_jerry", digest), ("my_app_tom", digest)]
    assert project.query("SELECT serial FROM rolekit_rotation WHERE context = 'dev'") == [(0,)]
    project.query("UPDATE rolekit_meta SET value = '99' WHERE key = 'schema_version'")
    proc = project.upgrade("dev", check=False)
    assert "newer than this rolekit" in proc.stderr


def test_concurrent_upgrades_are_serialised(project: Project) -> None:
    cmd = [sys.executable, "-m", "alembic", "-x", "context=dev", "upgrade", "head"]
    procs = [project.spawn(*cmd) for _ in range(4)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    assert sorted(history(project)) == sorted(
        [
            ("allow_login_for_my_app", "executed"),
            ("grant_permissions_to_my_app", "executed"),
            ("set_passwords_dev", "executed"),
        ]
    )


def test_downgrade_then_upgrade_reruns_repeatables_of_recreated_roles(project: Project) -> None:
    project.upgrade("dev")
    once = role_snapshot(project.cluster)
    project.downgrade()
    project.upgrade("dev")
    assert role_snapshot(project.cluster) == once
    reran = [h for h in history(project)[3:]]
    assert sorted(reran) == [
        ("allow_login_for_my_app", "reran"),
        ("grant_permissions_to_my_app", "reran"),
        ("set_passwords_dev", "reran"),
    ]


def test_offline_sql_never_prints_a_secret(project: Project) -> None:
    out = project.alembic("upgrade", "head", "--sql", x={"pg_version": "15"}).stdout
    assert "GRANT USAGE, CREATE ON SCHEMA my_schema TO my_app" in out
    proc = project.alembic(
        "upgrade", "head", "--sql", context="dev", x={"pg_version": "15"}, check=False
    )
    assert proc.returncode != 0
    assert "refusing to write a password verifier into an offline script" in proc.stderr
    for value in project.passwords.values():
        assert value not in proc.stdout + proc.stderr + out


def test_plan_lists_status_and_changes_nothing(project: Project) -> None:
    plan = project.rolekit("plan", "--context", "dev", "--json")
    import json

    rows = {r["id"]: r["status"] for r in json.loads(plan.stdout)["repeatables"]}
    assert rows == {
        "set_passwords_dev": "pending",
        "set_passwords_prod": "skipped",
        "grant_permissions_to_my_app": "pending",
        "allow_login_for_my_app": "pending",
    }
    project.upgrade("dev")
    project.set_password("my_app_jerry", "dev")
    offset = project.cluster.log_size()
    rows = {
        r["id"]: r["status"]
        for r in json.loads(project.rolekit("plan", "--context", "dev", "--json").stdout)[
            "repeatables"
        ]
    }
    assert (
        rows["set_passwords_dev"] == "changed"
        and rows["grant_permissions_to_my_app"] == "unchanged"
    )
    assert not [
        s
        for s in statements(project.cluster.log_since(offset))
        if re.match(r"\s*(ALTER|GRANT|INSERT|CREATE)", s)
    ]
