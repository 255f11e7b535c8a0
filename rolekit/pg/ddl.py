"""The role statements rolekit emits (CREATE/ALTER/DROP ROLE, GRANT, COMMENT),
composed with :mod:`psycopg2.sql`.

PostgreSQL version differences of these statements live here, next to the
SQL they change.  Queries and rolekit's own tables live with their readers
(:mod:`~rolekit.pg.catalog`, :mod:`~rolekit.repeatable.changelog`,
:mod:`~rolekit.pg.positions`...).
"""

from __future__ import annotations

from psycopg2 import sql

from rolekit.pg.catalog import PG16


def _id(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def create_nologin_role(name: str) -> sql.Composed:
    return sql.SQL("CREATE ROLE {} NOLOGIN").format(_id(name))


def grant_membership(group: str, member: str, server_version: int) -> sql.Composed:
    """Make *member* a member whose login-time ``SET role`` takes effect.

    From PostgreSQL 16 a membership without ``SET TRUE`` lets the member
    inherit privileges but makes ``ALTER ROLE member SET role = group`` a
    silent no-op at login (only a WARNING is logged), so objects would be
    owned by the member.  Granting again with options updates an existing
    membership, which is how rolekit converges.
    """
    if server_version >= PG16:
        return sql.SQL("GRANT {} TO {} WITH INHERIT TRUE, SET TRUE").format(_id(group), _id(member))
    return sql.SQL("GRANT {} TO {}").format(_id(group), _id(member))


def grant_to_current_user(role: str, server_version: int) -> sql.Composed:
    """Let a non-superuser migration user act for *role*.

    PostgreSQL 16 changed CREATEROLE: the creator gets only ADMIN on roles it
    creates, so it may neither ``SET ROLE`` to them (to create objects they
    own) nor use their privileges (to ``GRANT`` on objects they own, or to
    ``REASSIGN OWNED BY`` them).  Before 16 a plain membership gives both.
    """
    if server_version >= PG16:
        return sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET TRUE").format(_id(role))
    return sql.SQL("GRANT {} TO CURRENT_USER").format(_id(role))


def grant_member_to_current_user(member: str, server_version: int) -> sql.Composed:
    """Let a non-superuser migration user see and end *member*'s sessions.

    ``pg_stat_activity`` shows the address and state of a backend, and
    ``pg_terminate_backend`` ends it, for users that have the privileges of
    the backend's role.  Membership with INHERIT gives exactly that, without
    ``pg_read_all_stats`` or ``pg_signal_backend``; SET is not needed, so on
    16+ it is not granted.
    """
    if server_version >= PG16:
        return sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE").format(_id(member))
    return sql.SQL("GRANT {} TO CURRENT_USER").format(_id(member))


def comment_on_role(role: str, comment: str) -> sql.Composed:
    """``COMMENT ON ROLE ... IS '...'``: the cluster-wide place of rolekit's claim.

    The comment is quoted in the statement (online only: a literal is rendered
    by the connection), so the claims of several roles go in one round trip.
    """
    return sql.SQL("COMMENT ON ROLE {} IS {}").format(_id(role), sql.Literal(comment))


def set_login_role(member: str, group: str) -> sql.Composed:
    return sql.SQL("ALTER ROLE {} SET role = {}").format(_id(member), _id(group))


def set_login(member: str, login: bool) -> sql.Composed:
    return sql.SQL("ALTER ROLE {} {}").format(_id(member), sql.SQL("LOGIN" if login else "NOLOGIN"))


def set_password_verifier(member: str) -> sql.Composed:
    """``ALTER ROLE ... PASSWORD %s``, the parameter being a SCRAM verifier.

    The server recognises a ``SCRAM-SHA-256$`` string as already hashed and
    stores it as is, so the plaintext never leaves the client.
    """
    return sql.SQL("ALTER ROLE {} PASSWORD %s").format(_id(member))


def expire_password(member: str) -> sql.Composed:
    return sql.SQL("ALTER ROLE {} VALID UNTIL '-infinity'").format(_id(member))


def clear_valid_until(member: str) -> sql.Composed:
    return sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(_id(member))


def reassign_owned(roles: list[str], target: str | None) -> sql.Composed:
    return sql.SQL("REASSIGN OWNED BY {} TO {}").format(
        sql.SQL(", ").join(map(_id, roles)),
        _id(target) if target else sql.SQL("CURRENT_USER"),
    )


def drop_owned(roles: list[str]) -> sql.Composed:
    return sql.SQL("DROP OWNED BY {}").format(sql.SQL(", ").join(map(_id, roles)))


def drop_roles(roles: list[str]) -> sql.Composed:
    return sql.SQL("DROP ROLE {}").format(sql.SQL(", ").join(map(_id, roles)))


def terminate_backends() -> sql.Composed:
    """End the backends whose pids are the parameter (an array)."""
    return sql.SQL("SELECT pg_terminate_backend(pid) FROM unnest({}::int[]) AS pid").format(
        sql.Placeholder()
    )
