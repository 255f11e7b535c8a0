"""Exact login tracking (PostgreSQL 17+, opt-in): who logged in as a leaving member.

Sampling ``pg_stat_activity`` sees a connection only while it lives; a job
that connects for a few milliseconds can slip between two polls.  From
PostgreSQL 17 a ``login`` event trigger runs at every login to a database,
so rolekit can record the logins of the members it marks as leaving (the
old member during a rotation's overlap) and refuse ``finish`` while the
leaving member logged in within the quiet period.

The login function runs as the superuser that installed it (``SECURITY
DEFINER``) at every login of every role, so whatever it reads or writes is
trusted with a superuser's power (issue 23: an app role that planted its own
``rolekit_logins`` table, with a trigger, in ``public`` became SUPERUSER at
its next login).  So:

* everything lives in the schema :data:`SCHEMA`, created by the installing
  superuser, in which nobody else may create; rolekit refuses to install
  into, or to use, a schema, table or function it cannot trust (a
  non-superuser owner, a foreign trigger, rule or policy, a grant that lets
  another role write) -- see :func:`trust_problems`;
* the leaving members are rows of :data:`LEAVING_TABLE`, which only a
  superuser writes.  The former mark, a per-role placeholder setting, could be
  set (or reset) by any client in its startup options;
* the function has a fixed ``search_path`` and names every object
  schema-qualified.

The trigger is built so it can never refuse a login: an error in a login
trigger makes every login to the database fail.  So the function

* catches every error (a revoked privilege, a read-only transaction,
  ``query_canceled`` and ``assert_failure``, which ``WHEN OTHERS`` does not
  catch) and only logs it;
* writes nothing on a standby, where the trigger runs too;
* waits at most ``lock_timeout`` (50 ms) for a lock: a migration holding
  its tables must not stall logins.

It tracks logins to the database it is installed in (event triggers are
per database); the drain keeps sampling every host as well.  Installing it
needs a superuser (``CREATE EVENT TRIGGER``); where that or PostgreSQL 17
is missing, the op says so and does nothing, and the drain samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from psycopg2 import sql

from rolekit.errors import TrackingError
from rolekit.pg.catalog import Reader

log = logging.getLogger(__name__)

#: the first PostgreSQL with ``login`` event triggers
PG17 = 170000
EVENT_TRIGGER = "rolekit_login_tracking"
#: the schema of the function and tables: only the installing superuser controls it
SCHEMA = "rolekit_tracking"
FUNCTION = "track_login"
LOGINS_TABLE = "logins"
#: the members whose logins are recorded; only a superuser writes it
LEAVING_TABLE = "leaving"
#: what rolekit before issue 23 installed, in the migration's current schema
OLD_FUNCTION = "rolekit_track_login"
OLD_TABLE = "rolekit_logins"
OLD_SETTING = "rolekit.leaving"
#: the application_name of rolekit's own logins as the members (its password
#: checks): they are not the applications the drain waits for
OWN_LOGINS = "rolekit-verify"


class TrackedLogin(NamedTuple):
    """The last login of a leaving member from one address."""

    user: str
    client_addr: str
    #: seconds between that login and the server's ``now()``
    age: float
    logins: int


def unavailable_reason(server_version: int, superuser: bool) -> str | None:
    """Why login tracking cannot be installed here, or None."""
    if server_version < PG17:
        return (
            f"PostgreSQL {server_version // 10000} has no login event triggers (17+); "
            "the drain samples pg_stat_activity"
        )
    if not superuser:
        return "installing a login event trigger needs a superuser; the drain samples"
    return None


def unavailable_note(reader: Reader) -> str:
    """Why the drain samples only, for its progress and ``status``."""
    if reader.server_version < PG17:
        return (
            f"login tracking unavailable (PostgreSQL {reader.server_version // 10000} has no "
            "login event triggers; 17+); sampling every host"
        )
    return "login tracking is off (op.enable_login_tracking() turns it on); sampling every host"


def _name(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


#: the login function's body: constants only, so it renders offline too
_BODY = sql.SQL(
    """$rolekit$
DECLARE
  leaving boolean;
BEGIN
  BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
      RETURN;  -- a standby: read-only (roles and the leaving rows replicate)
    END IF;
    SELECT true INTO leaving FROM {leaving} WHERE role = session_user;
    IF leaving IS NULL OR pg_catalog.current_setting('application_name') = '{own}' THEN
      RETURN;  -- not leaving, or rolekit's own password check
    END IF;
    INSERT INTO {logins} AS l (role, client_addr, last_login, logins)
    VALUES (session_user, coalesce(pg_catalog.host(pg_catalog.inet_client_addr()), 'local'),
            pg_catalog.clock_timestamp(), 1)
    ON CONFLICT (role, client_addr)
    DO UPDATE SET last_login = excluded.last_login, logins = l.logins + 1;
  EXCEPTION WHEN OTHERS OR query_canceled OR assert_failure THEN
    -- never refuse a login: an error here would lock everybody out
    -- (WHEN OTHERS alone lets query_canceled and assert_failure through)
    RAISE LOG 'rolekit login tracking skipped for %: %', session_user, SQLERRM;
  END;
END $rolekit$"""
).format(leaving=_name(LEAVING_TABLE), logins=_name(LOGINS_TABLE), own=sql.SQL(OWN_LOGINS))


def install_statements(*, schema_exists: bool) -> list[sql.Composable]:
    """The schema, the tables and the function; the trigger itself is
    :func:`trigger_statement`.

    An existing schema is reused only after :func:`trust_problems` found
    nothing wrong with it (the caller checks); without one, every object is
    created fresh, so a name someone else took fails the migration instead
    of being adopted.
    """
    exists = sql.SQL("IF NOT EXISTS " if schema_exists else "")
    statements: list[sql.Composable] = []
    if not schema_exists:
        statements.append(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    statements += [
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(SCHEMA)),
        sql.SQL(
            "CREATE TABLE {}{} (role name NOT NULL, client_addr text NOT NULL,"
            " last_login timestamptz NOT NULL, logins bigint NOT NULL,"
            " PRIMARY KEY (role, client_addr))"
        ).format(exists, _name(LOGINS_TABLE)),
        sql.SQL("CREATE TABLE {}{} (role name PRIMARY KEY)").format(exists, _name(LEAVING_TABLE)),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}() RETURNS event_trigger LANGUAGE plpgsql"
            " SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms'"
            " AS {}"
        ).format(_name(FUNCTION), _BODY),
        sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(_name(FUNCTION)),
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(EVENT_TRIGGER)),
    ]
    return statements


def trigger_statement() -> sql.Composable:
    """``CREATE EVENT TRIGGER ... ON login``, to run after the migration commits.

    PostgreSQL 17 takes an exclusive lock on the database object to set
    ``pg_database.dathasloginevt`` when a login trigger is created (or
    enabled), and every new login to the database waits for it until that
    transaction ends.  Inside the migration transaction that would stall the
    applications -- and rolekit's own login checks -- for the rest of the
    migration; in a transaction of its own, for one statement.
    """
    return sql.SQL("CREATE EVENT TRIGGER {} ON login EXECUTE FUNCTION {}()").format(
        sql.Identifier(EVENT_TRIGGER), _name(FUNCTION)
    )


def remove_statements() -> list[sql.Composable]:
    """Undo :func:`install_statements` (the caller has checked the schema is
    rolekit's); the trigger goes first, so no login waits on the tables being
    dropped.  ``DROP SCHEMA`` without ``CASCADE``: what else someone put there
    stays, and the downgrade says so."""
    return [
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(EVENT_TRIGGER)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_name(FUNCTION)),
        sql.SQL("DROP TABLE IF EXISTS {}, {}").format(_name(LOGINS_TABLE), _name(LEAVING_TABLE)),
        sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(SCHEMA)),
    ]


#: a grant that lets a role other than the owner (and not a superuser) do
#: *privilege* on an object with ACL column *acl* and owner column *owner*
_FOREIGN_GRANT = (
    "EXISTS (SELECT 1 FROM pg_catalog.aclexplode({acl}) a"
    " LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee"
    " WHERE {privilege} AND a.grantee <> {owner} AND NOT coalesce(g.rolsuper, false))"
)
_SCHEMA_CHECK = sql.SQL(
    "SELECT r.rolname::text, r.rolsuper, "
    + _FOREIGN_GRANT.format(
        acl="n.nspacl", privilege="a.privilege_type = 'CREATE'", owner="n.nspowner"
    )
    + " FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner"
    " WHERE n.nspname = %s"
)
_TABLE_CHECK = sql.SQL(
    "SELECT c.relname::text, c.relkind::text, r.rolname::text, r.rolsuper,"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid),"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid), "
    + _FOREIGN_GRANT.format(
        acl="c.relacl", privilege="a.privilege_type <> 'SELECT'", owner="c.relowner"
    )
    + " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_roles r ON r.oid = c.relowner"
    " WHERE n.nspname = %s AND c.relname = ANY(%s)"
)
_FUNCTION_CHECK = sql.SQL(
    "SELECT r.rolname::text, r.rolsuper, p.prosecdef FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " JOIN pg_catalog.pg_roles r ON r.oid = p.proowner WHERE n.nspname = %s AND p.proname = %s"
)


def trust_problems(reader: Reader, *, installing: bool) -> list[str]:
    """What is wrong with :data:`SCHEMA` and the objects in it, or nothing.

    The login function acts as a superuser, so each object it touches must be
    one only a superuser can change: owned by a superuser, the schema with no
    CREATE for anyone else, each table a plain table with no trigger, rule or
    policy and no grant that lets another role write to it (or add a trigger).
    *installing*: a missing schema or object is fine (it will be created);
    otherwise it is a problem.
    """
    schema = reader.fetchall(_SCHEMA_CHECK, (SCHEMA,))
    if not schema:
        return [] if installing else [f"schema {SCHEMA} is missing"]
    owner, superuser, foreign_create = schema[0]
    problems = []
    if not superuser:
        problems.append(f"schema {SCHEMA} is owned by {owner!r}, not a superuser")
    if foreign_create:
        problems.append(f"schema {SCHEMA} lets a role that is not a superuser create in it")
    problems += _table_problems(reader, installing=installing)
    for owner, superuser, definer in reader.fetchall(_FUNCTION_CHECK, (SCHEMA, FUNCTION)):
        if not superuser or not definer:
            problems.append(
                f"function {SCHEMA}.{FUNCTION} is owned by {owner!r}"
                + ("" if definer else " and is not SECURITY DEFINER")
            )
    return problems


def _table_problems(reader: Reader, *, installing: bool) -> list[str]:
    tables = (LOGINS_TABLE, LEAVING_TABLE)
    rows = reader.fetchall(_TABLE_CHECK, (SCHEMA, list(tables)))
    problems = (
        []
        if installing
        else [f"table {SCHEMA}.{t} is missing" for t in tables if t not in {r[0] for r in rows}]
    )
    for name, kind, owner, superuser, trigger, rule, policy, foreign_grant in rows:
        what = f"{SCHEMA}.{name}"
        if kind != "r":
            problems.append(f"{what} is not a plain table (relkind {kind!r})")
        if not superuser:
            problems.append(f"table {what} is owned by {owner!r}, not a superuser")
        problems += [
            f"table {what} has a {thing} rolekit did not create"
            for thing, found in (("trigger", trigger), ("rule", rule), ("policy", policy))
            if found
        ]
        if foreign_grant:
            problems.append(f"table {what} lets a role that is not a superuser change it")
    return problems


_TRIGGER = sql.SQL(
    "SELECT n.nspname::text, p.proname::text, e.evtenabled <> 'D'"
    " FROM pg_catalog.pg_event_trigger e JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE e.evtname = %s"
)


def old_install(reader: Reader) -> str | None:
    """The schema of a login trigger installed by rolekit before issue 23, or None."""
    if reader.server_version < PG17:
        return None
    rows = reader.fetchall(_TRIGGER, (EVENT_TRIGGER,))
    if rows and (rows[0][0], rows[0][1]) != (SCHEMA, FUNCTION):
        return str(rows[0][0])
    return None


def installed_schema(reader: Reader) -> str | None:
    """The schema of the enabled tracking trigger's tables, or None.

    Raises :class:`TrackingError` where the trigger is on but its objects
    cannot be trusted (or are an old install): the drain would otherwise
    read, and the rotation write, what someone else may control.
    """
    if reader.server_version < PG17:
        return None
    rows = reader.fetchall(_TRIGGER, (EVENT_TRIGGER,))
    if not rows or not rows[0][2]:
        return None
    if (rows[0][0], rows[0][1]) != (SCHEMA, FUNCTION):
        raise TrackingError(
            f"login tracking was installed by an older rolekit, in schema {rows[0][0]!r}, "
            "where a role that may create objects there can take it over (and run code as a "
            "superuser at a login); nothing was changed. Add a revision that runs "
            "op.enable_login_tracking() (it replaces the old install), as a superuser"
        )
    if problems := trust_problems(reader, installing=False):
        raise TrackingError(
            f"login tracking cannot be trusted: {'; '.join(problems)}; nothing was changed. "
            "rolekit did not make these: check who did, then downgrade and upgrade the "
            "revision with op.enable_login_tracking()"
        )
    return SCHEMA


def leaving_statements(
    reader: Reader, family: Sequence[str], leaving: Iterable[str]
) -> list[sql.Composable]:
    """The statements that mark *leaving* as the family's only tracked members and
    forget the others' logins.

    Run in the migration transaction that starts (or ends) an overlap, so
    tracking starts with the rotation.  None where tracking is off; where
    this migration user may not set the mark (it needs a superuser, like the
    trigger), a warning says so: the drain then samples only.
    """
    schema = installed_schema(reader)
    if schema is None:
        return []
    superuser = reader.fetchall(
        sql.SQL("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
    )[0][0]
    if not superuser:
        log.warning(
            "login tracking is on, but this migration user may not mark the leaving member "
            "(%s.%s needs a superuser): the drain samples only",
            SCHEMA,
            LEAVING_TABLE,
        )
        return []
    marked = [m for m in family if m in set(leaving)]
    return [
        sql.SQL("DELETE FROM {} WHERE role = ANY({})").format(
            _name(LEAVING_TABLE), sql.Literal(list(family))
        ),
        sql.SQL("INSERT INTO {} SELECT unnest({}::name[])").format(
            _name(LEAVING_TABLE), sql.Literal(marked)
        ),
        sql.SQL("DELETE FROM {} WHERE role = ANY({})").format(
            _name(LOGINS_TABLE), sql.Literal([m for m in family if m not in marked])
        ),
    ]


def recent_logins(
    reader: Reader, schema: str, members: Iterable[str], within: float | None = None
) -> list[TrackedLogin]:
    """Last logins of *members* (within *within* seconds of now, when given)."""
    rows = reader.fetchall(
        sql.SQL(
            "SELECT role::text, client_addr, extract(epoch FROM now() - last_login)::float8,"
            " logins FROM {} WHERE role = ANY(%s)"
            " AND (%s::float8 IS NULL OR last_login > now() - make_interval(secs => %s))"
            " ORDER BY last_login DESC"
        ).format(sql.Identifier(schema, LOGINS_TABLE)),
        (list(members), within, within),
    )
    return [TrackedLogin(*row) for row in rows]


def has_trigger(reader: Reader) -> bool:
    """Whether a login trigger of rolekit's exists here (any version, enabled or not)."""
    return reader.server_version >= PG17 and bool(reader.fetchall(_TRIGGER, (EVENT_TRIGGER,)))


def schema_exists(reader: Reader) -> bool:
    return bool(reader.fetchall(_SCHEMA_CHECK, (SCHEMA,)))


_OLD_TABLE = sql.SQL(
    "SELECT r.rolname::text, r.rolsuper AND c.relkind = 'r' FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE n.nspname = %s AND c.relname = %s"
)
#: roles with the old leaving mark in this database, and whether it is on
_OLD_MARKS = sql.SQL(
    "SELECT r.rolname::text, s.setconfig @> ARRAY[%s] FROM pg_catalog.pg_db_role_setting s"
    " JOIN pg_catalog.pg_roles r ON r.oid = s.setrole"
    " WHERE s.setdatabase = (SELECT oid FROM pg_catalog.pg_database"
    " WHERE datname = current_database())"
    " AND EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE %s)"
)


def old_install_statements(reader: Reader, *, keep_marks: bool) -> list[sql.Composable]:
    """Remove what rolekit before issue 23 installed (decided: migrate, not refuse).

    The old trigger and function go (``DROP`` runs none of their code); the
    old table only where a superuser owns it -- one someone else planted is
    left alone, with a warning, since rolekit did not make it.  The old
    per-role leaving marks are reset; with *keep_marks* the members they
    marked become rows of :data:`LEAVING_TABLE` (which must exist by then),
    so a rotation in its overlap keeps being tracked.
    """
    statements: list[sql.Composable] = []
    old = old_install(reader)
    if old is not None:
        statements += [
            sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(EVENT_TRIGGER)),
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(old, OLD_FUNCTION)),
        ]
        for owner, ours in reader.fetchall(_OLD_TABLE, (old, OLD_TABLE)):
            if ours:
                statements.append(sql.SQL("DROP TABLE {}").format(sql.Identifier(old, OLD_TABLE)))
            else:
                log.warning(
                    "login tracking: left %s.%s alone: it is owned by %r, not by a superuser, "
                    "so rolekit did not make it; check what it holds and who made it",
                    old,
                    OLD_TABLE,
                    owner,
                )
    database = reader.fetchall(sql.SQL("SELECT current_database()::text"))[0][0]
    marks = reader.fetchall(_OLD_MARKS, (f"{OLD_SETTING}=on", f"{OLD_SETTING}=%"))
    for role, _ in marks:
        statements.append(
            sql.SQL("ALTER ROLE {} IN DATABASE {} RESET {}").format(
                sql.Identifier(role), sql.Identifier(database), sql.SQL(OLD_SETTING)
            )
        )
    leaving = [role for role, on in marks if on]
    if keep_marks and leaving:
        statements.append(
            sql.SQL("INSERT INTO {} SELECT unnest({}::name[]) ON CONFLICT DO NOTHING").format(
                _name(LEAVING_TABLE), sql.Literal(leaving)
            )
        )
    return statements
