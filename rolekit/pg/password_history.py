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

Where the migration user may read ``pg_authid`` (a superuser), each entry
also keeps the SHA-256 of the SCRAM verifier the server stored for it,
computed by the server in the transaction that set it: the verifier never
leaves the server, and its random salt makes the digest useless for testing
password guesses.  While the server still holds that very verifier and the
secrets file still holds that very password, the server accepts the
password: :func:`proven` tells so without a login (see
:mod:`rolekit.pg.logins`).
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
#: only a superuser (or a role granted SELECT on it) reads ``pg_authid``;
#: ``pg_read_all_data`` does not cover it
_AUTHID_READABLE = sql.SQL("has_table_privilege('pg_catalog.pg_authid', 'SELECT')")
#: the digest of a role's stored verifier, computed by the server (``a`` is pg_authid)
_VERIFIER_DIGEST = sql.SQL("encode(sha256(convert_to(a.rolpassword, 'UTF8')), 'hex')")


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
    secrets file (inside its transaction, after its ``ALTER ROLE`` statements), with
    the digests of the verifiers the server now stores where the migration
    user may read them."""
    if not secrets:
        return
    row = session.fetchone(
        sql.SQL("SELECT (SELECT value FROM rolekit_meta WHERE key = %s), {}").format(
            _AUTHID_READABLE
        ),
        (_KEY_ROW,),
    )
    key, readable = bytes.fromhex(row[0]), bool(row[1])
    roles = [role for role, _ in secrets]
    prints = [print_of(key, role, secret) for role, secret in secrets]
    verifier, authid = (
        (_VERIFIER_DIGEST, sql.SQL(" JOIN pg_authid a ON a.oid = r.oid"))
        if readable
        else (sql.SQL("NULL"), sql.SQL(""))
    )
    session.execute(
        sql.SQL(
            "INSERT INTO {} (role, role_oid, context, fingerprint, verifier)"
            " SELECT s.role, r.oid, %s, s.print, {}"
            " FROM unnest(%s::text[], %s::text[]) AS s(role, print)"
            " JOIN pg_roles r ON r.rolname = s.role{}"
        ).format(sql.Identifier(HISTORY_TABLE), verifier, authid),
        (context.lower(), roles, prints),
        echo=False,
    )


def proven(reader: Reader, secrets: Sequence[tuple[str, Secret]], context: str) -> frozenset[str]:
    """The roles of *secrets* the server is known to accept their password from.

    A role is proven when its latest entry in *context* is its password on
    file and the server still stores the verifier recorded with that entry
    (nobody set another password since rolekit set this one).  The server
    reports both at this moment; the migration user must be able to read
    ``pg_authid``, otherwise nothing is proven and every member logs in.
    Two round trips at most, one when nothing can be proven.
    """
    if not secrets:
        return frozenset()
    # a history of schema 4 has no digests (its column comes with schema 5)
    row = reader.fetchall(
        sql.SQL(
            "SELECT {} AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attname = 'verifier' AND NOT attisdropped)"
        ).format(_AUTHID_READABLE),
        (HISTORY_TABLE,),
    )
    if not row[0][0]:
        return frozenset()
    rows = reader.fetchall(
        sql.SQL(
            "SELECT (SELECT value FROM rolekit_meta WHERE key = %s), latest.role,"
            " latest.fingerprint"
            " FROM (SELECT DISTINCT ON (h.role) h.role, h.role_oid, h.fingerprint, h.verifier"
            "   FROM {} h WHERE h.role = ANY(%s) AND h.context = %s"
            "   ORDER BY h.role, h.seq DESC) latest"
            " JOIN pg_authid a ON a.oid = latest.role_oid AND a.rolname = latest.role"
            " WHERE latest.verifier = {}"
        ).format(sql.Identifier(HISTORY_TABLE), _VERIFIER_DIGEST),
        (_KEY_ROW, [role for role, _ in secrets], context.lower()),
    )
    if not rows or not rows[0][0]:
        return frozenset()
    key = bytes.fromhex(rows[0][0])
    holds = {role: print_ for _, role, print_ in rows}
    return frozenset(
        role for role, secret in secrets if holds.get(role) == print_of(key, role, secret)
    )
