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
from typing import Any

import psycopg2
import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import Client, connect_as
from tests.guards.helpers import can_login, is_migrator, login_as, rotate

LOGINS = "rolekit_tracking.logins"


def with_tracking(project: Project) -> str:
    """Add the revision and upgrade; return what the upgrade printed."""
    project.add_revision(
        "0003", "0002", "op.enable_login_tracking()", "op.disable_login_tracking()"
    )
    return project.upgrade("dev").stderr


def tracked(project: Project) -> dict[str, int]:
    """Logins recorded per member (in the table of rolekit before issue 23 where
    that is the one installed, so the attacks below fail on it for their own reason)."""
    table = LOGINS
    if project.cluster.query_one(f"SELECT to_regclass('{LOGINS}')") is None:
        table = "public.rolekit_logins"
    rows = project.cluster.connect().cursor()
    rows.execute(f"SELECT role::text, sum(logins)::int FROM {table} GROUP BY role")
    return dict(rows.fetchall())


def leaving(project: Project) -> set[str]:
    """Members whose logins the trigger records (rows only a superuser writes)."""
    rows = project.cluster.connect().cursor()
    rows.execute("SELECT role::text FROM rolekit_tracking.leaving")
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
    assert project.cluster.query_one("SELECT to_regnamespace('rolekit_tracking')") is None


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
    "table dropped": [f"DROP TABLE {LOGINS}"],
    "privileges revoked": [
        "CREATE ROLE powerless NOLOGIN",
        "ALTER FUNCTION rolekit_tracking.track_login() OWNER TO powerless",
        f"REVOKE ALL ON {LOGINS} FROM powerless",
    ],
    "read-only transaction": ["ALTER ROLE my_app_tom SET default_transaction_read_only = on"],
    # query_canceled (57014) is not caught by WHEN OTHERS (issue 23)
    "insert canceled": [
        "CREATE FUNCTION public.cancel() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'no' USING ERRCODE = 'query_canceled'; END$$",
        f"CREATE TRIGGER cancel BEFORE INSERT ON {LOGINS} FOR EACH ROW"
        " EXECUTE FUNCTION public.cancel()",
    ],
}
#: faults that also break the lookup every login makes in the leaving table
LOOKUP_FAULTS = {"privileges revoked"}


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
                cur.execute(f"LOCK TABLE {LOGINS} IN ACCESS EXCLUSIVE MODE")
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
    # a role that is not leaving writes nothing: no fault of the logins table reaches it
    if fault not in LOOKUP_FAULTS:
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


# -- issue 23: an app role attacks the tracker ---------------------------------------
#
# The login function runs as the superuser that installed it.  The attacker is
# the application (my_app_tom), in the setup the finding names: its group owns
# the database, so it owns schema public (PostgreSQL 15+: pg_database_owner)
# and may create schemas.  After each attack no app role is a superuser, both
# members still log in, and the drain still sees the leaving member's logins.

#: a trigger on the tracker's table that runs as whoever inserts: the login function's superuser
PAYLOADS = {
    "escalate": "ALTER ROLE my_app_tom SUPERUSER; RETURN NULL;",
    "cancel": "RAISE EXCEPTION 'no' USING ERRCODE = 'query_canceled';",
}
COLUMNS = (
    "(role name, client_addr text, last_login timestamptz, logins bigint,"
    " PRIMARY KEY (role, client_addr))"
)


def plant(table: str, payload: str = "escalate") -> list[str]:
    """The attacker's table at *table*, with its trigger."""
    return [
        f"CREATE TABLE {table} {COLUMNS}",
        "CREATE OR REPLACE FUNCTION public.pwn() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$BEGIN {PAYLOADS[payload]} END$$",
        f"CREATE TRIGGER pwn BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW"
        " EXECUTE FUNCTION public.pwn()",
    ]


def hostile(project: Project) -> None:
    """The group owns the database (the finding's setup)."""
    project.upgrade("dev")
    project.cluster.query_one("ALTER DATABASE postgres OWNER TO my_app")


def as_app(project: Project, statements: list[str]) -> list[str]:
    """Run *statements* as my_app_tom, each on its own; return the errors."""
    errors = []
    conn = login_as(project, "my_app_tom", application_name="attack")
    try:
        for stmt in statements:
            try:
                with conn.cursor() as cur:
                    cur.execute(stmt)
            except psycopg2.Error as exc:
                errors.append(f"{stmt}: {exc.pgerror}")
    finally:
        conn.close()
    return errors


def installed(project: Project) -> tuple[str, str, str]:
    """Schema, table and function of the installed tracker, read from the catalog."""
    row = project.query(
        "SELECT quote_ident(n.nspname), quote_ident(n.nspname) || '.' || quote_ident(c.relname),"
        " p.oid::regprocedure::text FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname LIKE '%%logins'"
        " WHERE e.evtname = 'rolekit_login_tracking'"
    )
    assert len(row) == 1, row
    return row[0]  # type: ignore[return-value]


def superusers(project: Project) -> set[str]:
    rows = project.query("SELECT rolname::text FROM pg_roles WHERE rolsuper")
    return {r[0] for r in rows}


def assert_safe_and_tracking(project: Project, **tom: Any) -> None:
    """No app role became a superuser; both members log in; only the leaving
    member's login (made with *tom*'s connection options) was recorded, and
    the drain sees it."""
    login_as(project, "my_app_tom", **tom).close()
    login_as(project, "my_app_jerry", options="-c rolekit.leaving=on").close()
    assert superusers(project) == {project.cluster.superuser}
    assert set(tracked(project)) == {"my_app_tom"}
    member = next(m for m in status_of(project)["members"] if m["name"] == "my_app_tom")
    assert member["places"][0]["last_login"] is not None


@pytest.mark.since(17)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_table_planted_in_public_is_never_used(project: Project, payload: str) -> None:
    """The finding's reproduction: the app creates ``public.rolekit_logins`` first."""
    hostile(project)
    assert as_app(project, plant("public.rolekit_logins", payload)) == []
    with_tracking(project)
    rotate(project, "begin")
    assert_safe_and_tracking(project)
    # the planted table is the app's, untouched and unused
    assert project.cluster.query_one("SELECT count(*) FROM public.rolekit_logins") == 0


@pytest.mark.since(17)
def test_a_planted_schema_is_refused_and_changes_nothing(project: Project) -> None:
    hostile(project)
    planted = ["CREATE SCHEMA rolekit_tracking", *plant("rolekit_tracking.logins")]
    assert as_app(project, [*planted, "CREATE TABLE rolekit_tracking.leaving (role name)"]) == []
    project.add_revision(
        "0003", "0002", "op.enable_login_tracking()", "op.disable_login_tracking()"
    )
    proc = project.upgrade("dev", check=False)
    assert proc.returncode != 0
    assert "refusing to install login tracking" in proc.stderr, proc.stderr[-600:]
    assert "schema rolekit_tracking is owned by 'my_app', not a superuser" in proc.stderr, (
        proc.stderr[-600:]
    )
    assert "nothing was changed" in proc.stderr and "Traceback" not in proc.stderr
    assert project.cluster.query_one("SELECT count(*) FROM pg_event_trigger") == 0
    assert superusers(project) == {project.cluster.superuser}
    login_as(project, "my_app_tom").close()  # the one member that logs in before a rotation


#: what the app tries on the installed tracker, whatever schema it is in
ATTACKS = {
    # alter, then drop and replace the table
    "table": lambda schema, table, function: [
        f"ALTER TABLE {table} OWNER TO my_app_tom",
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        f"GRANT ALL ON {table} TO my_app_tom",
        f"DROP TABLE {table}",
        *plant(table),
    ],
    # replace the function, or drop it (with the trigger)
    "function": lambda schema, table, function: [
        f"ALTER FUNCTION {function} SECURITY INVOKER",
        f"CREATE OR REPLACE FUNCTION {function} RETURNS event_trigger LANGUAGE plpgsql"
        " SECURITY DEFINER AS $$BEGIN ALTER ROLE my_app_tom SUPERUSER; END$$",
        f"DROP FUNCTION {function} CASCADE",
    ],
    # move the schema away and put one of the app's in its place
    "schema": lambda schema, table, function: [
        f"ALTER SCHEMA {schema} OWNER TO my_app_tom",
        f"GRANT CREATE ON SCHEMA {schema} TO my_app_tom",
        f"ALTER SCHEMA {schema} RENAME TO moved",
        f"CREATE SCHEMA {schema}",
        *plant(table),
    ],
}


@pytest.mark.since(17)
@pytest.mark.parametrize("attack", ATTACKS)
def test_the_app_cannot_take_over_the_installed_tracker(project: Project, attack: str) -> None:
    hostile(project)
    with_tracking(project)
    rotate(project, "begin")
    as_app(project, ATTACKS[attack](*installed(project)))
    assert_safe_and_tracking(project)


@pytest.mark.since(17)
def test_a_client_cannot_set_or_clear_the_leaving_mark(project: Project) -> None:
    """The former mark was a placeholder setting: any client could pass
    ``-c rolekit.leaving=on`` (and be recorded, through whatever the table
    ran) or ``=off`` (and hide from the drain)."""
    with_tracking(project)
    rotate(project, "begin")
    assert_safe_and_tracking(project, options="-c rolekit.leaving=off")


@pytest.mark.since(17)
def test_rolekit_refuses_to_use_a_tracker_it_did_not_make(project: Project) -> None:
    """A trigger on the table (here a superuser's, as the only one who still can)
    would run as the login function's superuser: the drain refuses to trust it."""
    with_tracking(project)
    rotate(project, "begin")
    _, table, _ = installed(project)
    project.cluster.query_one(
        "CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$"
    )
    project.cluster.query_one(
        f"CREATE TRIGGER audit AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION public.audit()"
    )
    before = role_snapshot(project.cluster)
    proc = rotate(project, "finish", check=False)
    assert proc.returncode == 3, proc.stderr
    assert f"login tracking cannot be trusted: table {table} has a trigger" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert role_snapshot(project.cluster) == before


OLD_INSTALL = [
    "CREATE TABLE public.rolekit_logins (role name NOT NULL, client_addr text NOT NULL,"
    " last_login timestamptz NOT NULL, logins bigint NOT NULL, PRIMARY KEY (role, client_addr))",
    "CREATE OR REPLACE FUNCTION public.rolekit_track_login() RETURNS event_trigger"
    " LANGUAGE plpgsql SECURITY DEFINER AS $$BEGIN END$$",
    "ALTER ROLE my_app_tom IN DATABASE postgres SET rolekit.leaving = on",
]


@pytest.mark.since(17)
def test_an_old_install_is_refused_then_replaced(project: Project) -> None:
    """What rolekit before issue 23 installed (in public, marks as settings):
    the drain refuses it; a revision with ``op.enable_login_tracking()``
    replaces it, keeping the rotation's leaving member."""
    project.upgrade("dev")
    rotate(project, "begin")
    for stmt in OLD_INSTALL:
        project.cluster.query_one(stmt)
    project.cluster.query_one(
        "CREATE EVENT TRIGGER rolekit_login_tracking ON login"
        " EXECUTE FUNCTION public.rolekit_track_login()"
    )
    proc = rotate(project, "finish", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "login tracking was installed by an older rolekit, in schema 'public'" in proc.stderr
    assert "op.enable_login_tracking()" in proc.stderr
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}
    with_tracking(project)
    for old in ("to_regclass('public.rolekit_logins')", "to_regprocedure('rolekit_track_login()')"):
        assert project.cluster.query_one(f"SELECT {old}") is None
    marks = (
        "SELECT count(*) FROM pg_db_role_setting WHERE setconfig::text LIKE '%%rolekit.leaving%%'"
    )
    assert project.cluster.query_one(marks) == 0
    assert leaving(project) == {"my_app_tom"}
    assert_safe_and_tracking(project)
