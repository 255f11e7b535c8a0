"""Catalog reads: what the server holds about roles, memberships and sessions.

Each function reads many roles in one round trip, so a run over hundreds of
families costs the same number of queries as a run over one.  They take any
:class:`Reader`: the migration's own connection (inside its transaction) or
rolekit's control connection (outside it, holding no locks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from psycopg2 import sql

#: PostgreSQL 16 split membership into ADMIN, INHERIT and SET options.
PG16 = 160000
#: PostgreSQL 15 added parameter privileges (GRANT SET ON PARAMETER).
PG15 = 150000


class Reader(Protocol):
    """Something that runs a catalog query: a migration session or a control connection."""

    @property
    def server_version(self) -> int: ...

    def fetchall(
        self, stmt: sql.Composable, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


class Membership(NamedTuple):
    """One row of ``pg_auth_members`` (options are ``True`` before 16)."""

    group: str
    member: str
    admin_option: bool
    inherit_option: bool
    set_option: bool


class RoleInfo(NamedTuple):
    """One row of ``pg_roles``, reduced to what rolekit decides on."""

    name: str
    oid: int
    can_login: bool
    superuser: bool
    replication: bool
    bypassrls: bool
    valid_until: dt.datetime | None
    #: ``VALID UNTIL`` lies in the past, so password logins are refused
    expired: bool
    #: values of ``ALTER ROLE ... SET`` for all databases, e.g. ``role=my_app``
    settings: tuple[str, ...]
    #: ``role`` set by ``ALTER ROLE ... IN DATABASE d SET role = r``: {d: r}
    database_login_roles: dict[str, str]
    #: ``COMMENT ON ROLE`` (a cluster-wide place: rolekit keeps its claim there)
    comment: str | None
    #: the groups it is a member of, with the options (``True`` before 16)
    member_of: tuple[Membership, ...] = ()

    @property
    def login_role(self) -> str | None:
        """The role its sessions switch to at login (``ALTER ROLE ... SET role``)."""
        return setting_value(self.settings, "role")

    @property
    def can_log_in_now(self) -> bool:
        """LOGIN and a password that has not expired."""
        return self.can_login and not self.expired


class SessionInfo(NamedTuple):
    """A live backend of a role, as ``pg_stat_activity`` shows it to us.

    Without ``pg_read_all_stats`` (or the privileges of the role) PostgreSQL
    shows only pid, user, database and application name of another user's
    backend; the address and start time are then ``None`` and
    :attr:`details_visible` is false.  The session still counts.
    """

    pid: int
    user: str
    application_name: str
    client_addr: str | None
    backend_start: dt.datetime | None
    details_visible: bool


def setting_value(settings: Iterable[str], name: str) -> str | None:
    """The value of *name* in ``setconfig`` entries like ``role=my_app``."""
    for setting in settings:
        key, _, value = setting.partition("=")
        if key == name:
            return value.strip('"')
    return None


def table_exists(reader: Reader, name: str) -> bool:
    """Whether *name* resolves to a table on the search path (rolekit's tables
    appear at their first write, so a read-only run asks first)."""
    return bool(reader.fetchall(sql.SQL("SELECT 1 WHERE to_regclass(%s) IS NOT NULL"), (name,)))


#: up to this many names, :func:`roles` looks each role up on its own
#: (:data:`_FEW_ROLES`); more are read with :data:`_MANY_ROLES`
FEW_ROLES = 8

# Both give the same columns for the same roles (tests/test_catalog_queries.py).
#
# Many roles: the settings and memberships are aggregated once for all the
# roles and joined by oid: a subquery per role would scan pg_auth_members and
# pg_db_role_setting (no index on the member or role alone) once per role,
# quadratic in the number of families.
_MANY_ROLES = (
    "WITH r AS (SELECT oid, rolname, rolcanlogin, rolsuper, rolreplication,"
    " rolbypassrls, rolvaliduntil FROM pg_roles WHERE rolname = ANY({names}))"
    " SELECT r.rolname, r.oid::bigint, r.rolcanlogin, r.rolsuper, r.rolreplication,"
    " r.rolbypassrls,"
    " CASE WHEN r.rolvaliduntil = 'infinity' THEN NULL ELSE r.rolvaliduntil END,"
    " coalesce(r.rolvaliduntil <= now(), false),"
    " coalesce(everywhere.setconfig, '{{}}'),"
    " coalesce(per_database.roles, '{{}}'),"
    " shobj_description(r.oid, 'pg_authid'),"
    " coalesce(groups.list, '[]')"
    " FROM r"
    " LEFT JOIN pg_db_role_setting everywhere"
    "   ON everywhere.setrole = r.oid AND everywhere.setdatabase = 0"
    " LEFT JOIN (SELECT s.setrole, array_agg(d.datname || '=' || c.value) AS roles"
    "   FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase,"
    "   LATERAL (SELECT substr(x, 6) AS value FROM unnest(s.setconfig) x"
    "            WHERE x LIKE {like}) c"
    "   WHERE s.setrole IN (SELECT oid FROM r) GROUP BY s.setrole) per_database"
    "   ON per_database.setrole = r.oid"
    " LEFT JOIN (SELECT m.member, json_agg(json_build_array(g.rolname, {options})) AS list"
    "   FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
    "   WHERE m.member IN (SELECT oid FROM r) GROUP BY m.member) groups"
    "   ON groups.member = r.oid"
)
# A few roles (one family, read before and after each change): the query
# above costs the server a plan of twice this one's and whole scans of
# pg_authid, pg_auth_members and pg_db_role_setting however few the roles;
# here a handful of subqueries, each over one role's rows.  (pg_roles'
# rolconfig is pg_db_role_setting's setconfig for setdatabase 0.)
_FEW_ROLES = (
    "SELECT r.rolname, r.oid::bigint, r.rolcanlogin, r.rolsuper, r.rolreplication,"
    " r.rolbypassrls,"
    " CASE WHEN r.rolvaliduntil = 'infinity' THEN NULL ELSE r.rolvaliduntil END,"
    " coalesce(r.rolvaliduntil <= now(), false),"
    " coalesce(r.rolconfig, '{{}}'),"
    " coalesce((SELECT array_agg(d.datname || '=' || substr(x, 6))"
    "   FROM pg_database d"
    "   JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = r.oid,"
    "   unnest(s.setconfig) x WHERE x LIKE {like}), '{{}}'),"
    " shobj_description(r.oid, 'pg_authid'),"
    " coalesce((SELECT json_agg(json_build_array(g.rolname, {options}))"
    "   FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
    "   WHERE m.member = r.oid), '[]')"
    " FROM pg_roles r WHERE r.rolname = ANY({names})"
)


def _roles_query(server_version: int, count: int, names: sql.Composable, like: str) -> sql.Composed:
    options = (
        "m.admin_option, m.inherit_option, m.set_option"
        if server_version >= PG16
        else "m.admin_option, true, true"
    )
    return sql.SQL(_FEW_ROLES if count <= FEW_ROLES else _MANY_ROLES).format(
        names=names, like=sql.SQL(like), options=sql.SQL(options)
    )


def roles_query(server_version: int, names: Iterable[str]) -> sql.Composed:
    """The query of :func:`roles` with the names composed in (no parameters), to
    end statements sent in one round trip; :func:`roles_from_rows` reads its rows."""
    listed = list(names)
    return _roles_query(server_version, len(listed), sql.Literal(listed), "'role=%'")


def roles_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, RoleInfo]:
    """The roles the rows of :func:`roles_query` describe, keyed by name."""
    return {
        row[0]: RoleInfo(
            name=row[0],
            oid=row[1],
            can_login=row[2],
            superuser=row[3],
            replication=row[4],
            bypassrls=row[5],
            valid_until=row[6],
            expired=row[7],
            settings=tuple(row[8]),
            database_login_roles=dict(item.split("=", 1) for item in row[9]),
            comment=row[10],
            member_of=tuple(Membership(group, row[0], *opts) for group, *opts in row[11]),
        )
        for row in rows
    }


def roles(reader: Reader, names: Iterable[str]) -> dict[str, RoleInfo]:
    """Return the roles among *names* that exist, keyed by name, with the groups
    each is a member of (one round trip)."""
    listed = list(names)
    # %% is how a parameterised query spells LIKE's %
    query = _roles_query(reader.server_version, len(listed), sql.SQL("%s"), "'role=%%'")
    return roles_from_rows(reader.fetchall(query, (listed,)))


#: one statement: clear the statistics snapshot, then read the backends.
#: PostgreSQL freezes pg_stat_activity for the rest of a transaction at its
#: first read; clearing it lets a poll inside a transaction see sessions leave.
#: ``backend_type`` is NOT filtered on: without pg_read_all_stats it is NULL
#: for other users' backends, and a filter on it would hide every session.
_SESSIONS = (
    "SELECT pg_stat_clear_snapshot();"
    " SELECT pid, usename::text, coalesce(application_name, ''), host(client_addr),"
    " backend_start, backend_type IS NOT NULL FROM pg_stat_activity"
    " WHERE usename = ANY(%s) AND pid <> pg_backend_pid()"
)


def sessions(reader: Reader, users: Iterable[str]) -> list[SessionInfo]:
    """Return every live backend of *users* but our own, visible or not in detail.

    ``pid`` and the user of a backend are shown to every role, so the count is
    exact whatever the migration user's privileges.
    """
    rows = reader.fetchall(sql.SQL(_SESSIONS), (list(users),))
    return [SessionInfo(*row) for row in rows]


class SessionPoll:
    """The drain's poll of one autocommit connection: *users*' backends, many times a second.

    It calls ``pg_stat_get_activity()`` itself, prepared once: the
    ``pg_stat_activity`` view joins ``pg_database`` and ``pg_authid`` and is
    planned again at every call, which costs the server about four times as
    much per poll (``bench/drain.py`` measures it).  The same columns are
    visible to every role as through the view: pid and user always, the rest
    with the privileges of the backend's role.  In autocommit every poll is
    its own transaction, so there is no statistics snapshot to clear.
    """

    _count = 0

    def __init__(self, reader: Reader, users: Iterable[str]) -> None:
        self.reader = reader
        rows = reader.fetchall(
            sql.SQL("SELECT oid::bigint, rolname::text FROM pg_roles WHERE rolname = ANY(%s)"),
            (list(users),),
        )
        self.names: dict[int, str] = dict(rows)
        SessionPoll._count += 1
        self.statement = sql.Identifier(f"rolekit_poll_{SessionPoll._count}")
        reader.fetchall(
            sql.SQL(
                "PREPARE {}(oid[]) AS SELECT pid, usesysid::bigint, coalesce(application_name, ''),"
                " host(client_addr), backend_start, backend_type IS NOT NULL"
                " FROM pg_stat_get_activity(NULL) WHERE usesysid = ANY($1)"
                " AND pid <> pg_backend_pid()"
            ).format(self.statement)
        )

    def __call__(self) -> list[SessionInfo]:
        rows = self.reader.fetchall(
            sql.SQL("EXECUTE {}(%s::oid[])").format(self.statement), (list(self.names),)
        )
        return [SessionInfo(pid, self.names[oid], *rest) for pid, oid, *rest in rows]

    def close(self) -> None:
        self.reader.fetchall(sql.SQL("DEALLOCATE {}").format(self.statement))


def sessions_of_oids(reader: Reader, oids: Iterable[int]) -> list[int]:
    """Backends still running as roles that no longer exist (by their old OIDs)."""
    rows = reader.fetchall(
        sql.SQL(
            "SELECT pid FROM pg_stat_activity WHERE usesysid = ANY(%s::oid[])"
            " AND pid <> pg_backend_pid()"
        ),
        (list(oids),),
    )
    return [row[0] for row in rows]


class Privileges(NamedTuple):
    """What the current user may see and do, read from the server.

    Guards consult this before deciding: a drain that cannot see, or a
    terminate that cannot act, refuses instead of passing.
    """

    user: str
    superuser: bool
    createrole: bool
    read_all_stats: bool
    signal_backend: bool
    #: roles whose privileges the current user has (membership with INHERIT)
    acts_for: frozenset[str]
    #: roles the current user may administer (grant, alter, comment on)
    administers: frozenset[str]

    def sees_details_of(self, role: str) -> bool:
        """Address, state and start time of *role*'s backends are visible."""
        return self.superuser or self.read_all_stats or role in self.acts_for

    def may_signal(self, role: str) -> bool:
        """``pg_terminate_backend`` works on *role*'s backends."""
        return self.superuser or self.signal_backend or role in self.acts_for


def privileges(reader: Reader, roles_of_interest: Iterable[str]) -> Privileges:
    """Read the current user's privileges over *roles_of_interest* in one round trip."""
    # Before 16, CREATEROLE administers every role but superusers; from 16 it
    # needs ADMIN OPTION, which the creator of a role gets.
    admin = (
        "pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')"
        if reader.server_version >= PG16
        else "(me.rolcreaterole AND NOT r.rolsuper)"
    )
    rows = reader.fetchall(
        sql.SQL(
            "SELECT me.rolname, me.rolsuper, me.rolcreaterole,"
            " pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),"
            " pg_has_role(current_user, 'pg_signal_backend', 'USAGE'),"
            " coalesce((SELECT array_agg(r.rolname) FROM pg_roles r WHERE r.rolname = ANY(%s)"
            "   AND pg_has_role(current_user, r.oid, 'USAGE')), '{{}}'),"
            " coalesce((SELECT array_agg(r.rolname) FROM pg_roles r WHERE r.rolname = ANY(%s)"
            "   AND (me.rolsuper OR {admin})), '{{}}')"
            " FROM pg_roles me WHERE me.rolname = current_user"
        ).format(admin=sql.SQL(admin)),
        (list(roles_of_interest), list(roles_of_interest)),
    )
    name, superuser, createrole, stats, signal, acts_for, administers = rows[0]
    return Privileges(
        name, superuser, createrole, stats, signal, frozenset(acts_for), frozenset(administers)
    )


def roles_without_admin(reader: Reader, names: Iterable[str]) -> list[str]:
    """Existing roles among *names* that the current user may not administer.

    From PostgreSQL 16, CREATEROLE alone no longer lets a user grant or alter
    roles: it needs ADMIN OPTION, which it gets only on roles it created.
    """
    rows = reader.fetchall(
        sql.SQL(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"
            " AND NOT pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION')"
        ),
        (list(names),),
    )
    return sorted(r[0] for r in rows)


def password_verifiers(reader: Reader, names: Iterable[str]) -> dict[str, str | None]:
    """The stored password (a SCRAM verifier, an MD5 hash or NULL) of each of
    *names*.  Only a superuser may read ``pg_authid`` (``pg_read_all_data``
    does not cover it): check :func:`privileges` first."""
    rows = reader.fetchall(
        sql.SQL("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)"),
        (list(names),),
    )
    return {name: verifier for name, verifier in rows}
