"""Exact login tracking (PostgreSQL 17+, opt-in): who logged in as a leaving member.

Sampling ``pg_stat_activity`` sees a connection only while it lives; a job
that connects for a few milliseconds can slip between two polls.  From
PostgreSQL 17 a ``login`` event trigger runs at every login to a database,
so rolekit can record the logins of the members it marks as leaving (the
old member during a rotation's overlap) and refuse ``finish`` while the
leaving member logged in within the quiet period.

The trigger is built so it can never refuse a login: an error in a login
trigger makes every login to the database fail.  So the function

* catches every error (a dropped table, revoked privileges, a read-only
  transaction) and only logs it;
* writes nothing on a standby, where the trigger runs too;
* waits at most ``lock_timeout`` (50 ms) for a lock: a migration holding
  its tables must not stall logins;
* costs no lookup at all for a role that is not leaving: the mark is a
  per-role setting (``ALTER ROLE m IN DATABASE d SET rolekit.leaving = on``),
  which PostgreSQL applies at login before the trigger runs, so the trigger
  only reads ``current_setting('rolekit.leaving')`` (the bench measures it).

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

from rolekit.catalog import Reader
from rolekit.errors import RolekitError

log = logging.getLogger(__name__)

#: the first PostgreSQL with ``login`` event triggers
PG17 = 170000
EVENT_TRIGGER = "rolekit_login_tracking"
FUNCTION = "rolekit_track_login"
#: the per-role setting that marks a leaving member (a placeholder variable)
LEAVING_SETTING = "rolekit.leaving"
LOGINS_TABLE = "rolekit_logins"
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


def install_statements(schema: str) -> list[sql.Composable]:
    """The table and the function, in *schema* (the migration's); the trigger
    itself is :func:`trigger_statement`."""
    names = {
        "logins": sql.Identifier(schema, LOGINS_TABLE),
        "function": sql.Identifier(schema, FUNCTION),
        "trigger": sql.Identifier(EVENT_TRIGGER),
        "own": sql.Literal(OWN_LOGINS),
        "setting": sql.Literal(LEAVING_SETTING),
    }
    if "$" in schema:  # the body is dollar-quoted
        raise RolekitError(f"login tracking cannot live in schema {schema!r} (it holds a '$')")
    body = sql.SQL(
        """$rolekit$
BEGIN
  -- current_setting(..., true) cannot fail: a role that is not leaving
  -- returns here, with no lookup and no subtransaction
  IF current_setting({setting}, true) IS DISTINCT FROM 'on' THEN
    RETURN;
  END IF;
  BEGIN
    IF pg_is_in_recovery() OR current_setting('application_name') = {own} THEN
      RETURN;  -- a standby (read-only; roles replicate), or rolekit's own password check
    END IF;
    INSERT INTO {logins} AS l (role, client_addr, last_login, logins)
    VALUES (session_user, coalesce(host(inet_client_addr()), 'local'), clock_timestamp(), 1)
    ON CONFLICT (role, client_addr)
    DO UPDATE SET last_login = excluded.last_login, logins = l.logins + 1;
  EXCEPTION WHEN OTHERS THEN
    -- never refuse a login: an error here would lock everybody out
    RAISE LOG 'rolekit login tracking skipped for %: %', session_user, SQLERRM;
  END;
END $rolekit$"""
    ).format(**names)
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {logins} (role name NOT NULL, client_addr text NOT NULL,"
            " last_login timestamptz NOT NULL, logins bigint NOT NULL,"
            " PRIMARY KEY (role, client_addr))"
        ).format(**names),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql"
            " SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms'"
            " AS {body}"
        ).format(function=names["function"], body=body),
        sql.SQL("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC").format(**names),
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {trigger}").format(**names),
    ]


def trigger_statement(schema: str) -> sql.Composable:
    """``CREATE EVENT TRIGGER ... ON login``, to run after the migration commits.

    PostgreSQL 17 takes an exclusive lock on the database object to set
    ``pg_database.dathasloginevt`` when a login trigger is created (or
    enabled), and every new login to the database waits for it until that
    transaction ends.  Inside the migration transaction that would stall the
    applications -- and rolekit's own login checks -- for the rest of the
    migration; in a transaction of its own, for one statement.
    """
    return sql.SQL("CREATE EVENT TRIGGER {} ON login EXECUTE FUNCTION {}()").format(
        sql.Identifier(EVENT_TRIGGER), sql.Identifier(schema, FUNCTION)
    )


def remove_statements(schema: str) -> list[sql.Composable]:
    """Undo :func:`install_statements`; the trigger goes first, so no login
    waits on the tables being dropped (the function would time out anyway)."""
    return [
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(EVENT_TRIGGER)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(schema, FUNCTION)),
        sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, LOGINS_TABLE)),
    ]


def installed_schema(reader: Reader) -> str | None:
    """The schema of the enabled tracking trigger's tables, or None."""
    if reader.server_version < PG17:
        return None
    rows = reader.fetchall(
        sql.SQL(
            "SELECT n.nspname::text FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE e.evtname = %s AND e.evtenabled <> 'D'"
            " AND to_regclass(quote_ident(n.nspname) || '.' || %s) IS NOT NULL"
        ),
        (EVENT_TRIGGER, LOGINS_TABLE),
    )
    return rows[0][0] if rows else None


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
    row = reader.fetchall(
        sql.SQL(
            "SELECT rolsuper, current_database()::text FROM pg_roles WHERE rolname = current_user"
        )
    )[0]
    if not row[0]:
        log.warning(
            "login tracking is on, but this migration user may not mark the leaving member "
            "(%s needs a superuser): the drain samples only",
            LEAVING_SETTING,
        )
        return []
    database, marked = sql.Identifier(row[1]), set(leaving)
    statements: list[sql.Composable] = [
        sql.SQL(
            "ALTER ROLE {} IN DATABASE {} SET {} = on"
            if member in marked
            else "ALTER ROLE {} IN DATABASE {} RESET {}"
        ).format(sql.Identifier(member), database, sql.SQL(LEAVING_SETTING))
        for member in family
    ]
    statements.append(
        sql.SQL("DELETE FROM {} WHERE role = ANY({})").format(
            sql.Identifier(schema, LOGINS_TABLE),
            sql.Literal([m for m in family if m not in marked]),
        )
    )
    return statements


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
