"""Catalog reads: what the server holds about roles, memberships and sessions.

Each function reads many roles in one round trip, so a run over hundreds of
families costs the same number of queries as a run over one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg2 import sql

from rolekit.runtime.session import Session

#: PostgreSQL 16 split membership into ADMIN, INHERIT and SET options.
PG16 = 160000


@dataclass(frozen=True)
class RoleInfo:
    """One row of ``pg_roles``, reduced to what rolekit decides on."""

    name: str
    oid: int
    can_login: bool
    superuser: bool
    replication: bool
    bypassrls: bool
    inherit: bool
    valid_until: dt.datetime | None
    #: ``VALID UNTIL`` lies in the past, so password logins are refused
    expired: bool
    #: values of ``ALTER ROLE ... SET`` for all databases, e.g. ``role=my_app``
    settings: tuple[str, ...]


@dataclass(frozen=True)
class Membership:
    """One row of ``pg_auth_members`` (options are ``True`` before 16)."""

    group: str
    member: str
    admin_option: bool
    inherit_option: bool
    set_option: bool


@dataclass(frozen=True)
class SessionInfo:
    """A live backend of a role, as ``pg_stat_activity`` shows it."""

    pid: int
    user: str
    application_name: str
    client_addr: str | None
    backend_start: dt.datetime | None


def roles(session: Session, names: Iterable[str]) -> dict[str, RoleInfo]:
    """Return the roles among *names* that exist, keyed by name."""
    rows = session.fetchall(
        sql.SQL(
            "SELECT r.rolname, r.oid::bigint, r.rolcanlogin, r.rolsuper, r.rolreplication,"
            " r.rolbypassrls, r.rolinherit,"
            " CASE WHEN r.rolvaliduntil = 'infinity' THEN NULL ELSE r.rolvaliduntil END,"
            " coalesce(r.rolvaliduntil <= now(), false),"
            " coalesce((SELECT s.setconfig FROM pg_db_role_setting s"
            "           WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}')"
            " FROM pg_roles r WHERE r.rolname = ANY(%s)"
        ),
        (list(names),),
    )
    return {
        row[0]: RoleInfo(
            name=row[0],
            oid=row[1],
            can_login=row[2],
            superuser=row[3],
            replication=row[4],
            bypassrls=row[5],
            inherit=row[6],
            valid_until=row[7],
            expired=row[8],
            settings=tuple(row[9]),
        )
        for row in rows
    }


def memberships(session: Session, groups: Iterable[str]) -> list[Membership]:
    """Return the memberships in *groups* (who is a member of each group)."""
    options = (
        "m.admin_option, m.inherit_option, m.set_option"
        if session.server_version >= PG16
        else "m.admin_option, true, true"
    )
    rows = session.fetchall(
        sql.SQL(
            "SELECT g.rolname, u.rolname, {options}"
            " FROM pg_auth_members m"
            " JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member"
            " WHERE g.rolname = ANY(%s)"
        ).format(options=sql.SQL(options)),
        (list(groups),),
    )
    return [Membership(*row) for row in rows]


def sessions(session: Session, users: Iterable[str]) -> list[SessionInfo]:
    """Return the live client backends of *users*, excluding our own."""
    # PostgreSQL freezes pg_stat_activity for the rest of a transaction at its
    # first read; clear that snapshot so a drain poll sees sessions leave.
    rows = session.fetchall(
        sql.SQL(
            "SELECT pg_stat_clear_snapshot();"
            " SELECT pid, usename::text, coalesce(application_name, ''), host(client_addr),"
            " backend_start FROM pg_stat_activity"
            " WHERE usename = ANY(%s) AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        ),
        (list(users),),
    )
    return [SessionInfo(*row) for row in rows]


def current_user_is_superuser(session: Session) -> bool:
    return bool(
        session.scalar(sql.SQL("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    )


def roles_without_admin(session: Session, names: Iterable[str]) -> list[str]:
    """Existing roles among *names* that the current user may not administer.

    From PostgreSQL 16, CREATEROLE alone no longer lets a user grant or alter
    roles: it needs ADMIN OPTION, which it gets only on roles it created.
    """
    rows = session.fetchall(
        sql.SQL(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"
            " AND NOT pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION')"
        ),
        (list(names),),
    )
    return sorted(r[0] for r in rows)
