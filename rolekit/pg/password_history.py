"""A password rolekit replaced is never set again.

Entries belong to the role as it exists now (its OID), in one context: a
member dropped by ``alembic downgrade`` and created again is a new role with
no history, and a database shared by two contexts (``dev`` and ``local`` on
one laptop) keeps each context's passwords apart, so switching back to the
other context's file is not mistaken for a stale one.

A restored backup of ``passwords.env``, or an old checkout of the committed
age file, holds passwords the members had before.  Setting one again would
lock out every application holding the current one -- and a retired password
may be the very one that leaked.  Like a password policy's history, rolekit
remembers every password it set, as an HMAC keyed by a random key of the
database's (``rolekit_meta``), never as the secret, in the append-only
``rolekit_password_history``.  Before anything else, a run refuses a
secrets file that holds any member's retired password.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from psycopg2 import sql

from rolekit.pg.catalog import Reader, table_exists
from rolekit.secrets import Secret, fingerprint

HISTORY_TABLE = "rolekit_password_history"
_KEY_ROW = "password_history_key"
#: fixed salt of the history's HMAC (the key makes it this database's)
_SALT = b"rolekit password history"


class SetPassword(NamedTuple):
    """One password rolekit set: its fingerprint, when and by whom."""

    fingerprint: str
    set_at: dt.datetime
    set_by: str


class PasswordHistory(NamedTuple):
    """The database's key and every password it recorded per role, oldest first."""

    key: bytes | None
    by_role: dict[str, list[SetPassword]]

    def retired(self, role: str, secret: Secret) -> SetPassword | None:
        """The entry that retired *secret* for *role*: the password was set once
        and replaced later (the latest entry is the role's current password)."""
        entries = self.by_role.get(role, [])
        if self.key is None or len(entries) < 2:
            return None
        mine = print_of(self.key, role, secret)
        if entries[-1].fingerprint == mine:
            return None
        for index, entry in enumerate(entries[:-1]):
            if entry.fingerprint == mine:
                return next(e for e in entries[index + 1 :] if e.fingerprint != mine)
        return None


def print_of(key: bytes, role: str, secret: Secret) -> str:
    """The history's fingerprint of *secret* as *role*'s password."""
    return fingerprint(secret, salt=_SALT, label=role, key=key)


def read(reader: Reader, roles: Iterable[str], context: str) -> PasswordHistory:
    """The history of *roles* in *context*: one round trip, two when the table exists."""
    names = sorted(set(roles))
    if not names or not table_exists(reader, HISTORY_TABLE):
        return PasswordHistory(None, {})
    rows = reader.fetchall(
        sql.SQL(
            "SELECT (SELECT value FROM rolekit_meta WHERE key = %s), h.role, h.fingerprint,"
            " h.set_at, h.set_by FROM {} h JOIN pg_roles r ON r.rolname = h.role"
            " AND r.oid = h.role_oid WHERE h.role = ANY(%s) AND h.context = %s ORDER BY h.seq"
        ).format(sql.Identifier(HISTORY_TABLE)),
        (_KEY_ROW, names, context.lower()),
    )
    by_role: dict[str, list[SetPassword]] = {}
    key: bytes | None = None
    for key_hex, role, print_, at, by in rows:
        key = bytes.fromhex(key_hex) if key_hex else None
        by_role.setdefault(role, []).append(SetPassword(print_, at, by))
    return PasswordHistory(key, by_role)


def retired_problem(
    history: PasswordHistory, secrets: Sequence[tuple[str, Secret]], filename: str, context: str
) -> str | None:
    """Why the secrets file is stale: it holds a retired password (``None``: it does not)."""
    found = []
    for role, secret in secrets:
        replaced = history.retired(role, secret)
        if replaced is not None:
            at = replaced.set_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            found.append(f"{role!r} (replaced {at} by {replaced.set_by!r})")
    if not found:
        return None
    return (
        f"{filename} holds a password that {', '.join(found)} had before; a password "
        "rolekit replaced is never set again (it may be the one that leaked). The secrets "
        "file is older than the database: a restored backup or an old checkout. Get the "
        f"current {filename} back (from where the last 'rolekit rotate' wrote it), or give "
        "the member a new password: 'rolekit rotate FAMILY begin' for the member "
        f"applications use, 'rolekit gen-password ROLE --context {context} --write' for one "
        "that may not log in"
    )


def record(session: Any, secrets: Sequence[tuple[str, Secret]], context: str) -> None:
    """Append the fingerprints of the passwords this run set from *context*'s
    secrets file (inside its transaction)."""
    if not secrets:
        return
    key_hex = session.scalar(sql.SQL("SELECT value FROM rolekit_meta WHERE key = %s"), (_KEY_ROW,))
    key = bytes.fromhex(key_hex)
    roles = [role for role, _ in secrets]
    prints = [print_of(key, role, secret) for role, secret in secrets]
    session.execute(
        sql.SQL(
            "INSERT INTO {} (role, role_oid, context, fingerprint)"
            " SELECT s.role, r.oid, %s, s.print"
            " FROM unnest(%s::text[], %s::text[]) AS s(role, print)"
            " JOIN pg_roles r ON r.rolname = s.role"
        ).format(sql.Identifier(HISTORY_TABLE)),
        (context.lower(), roles, prints),
        echo=False,
    )
