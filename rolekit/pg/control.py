"""rolekit's control connection: a second, autocommit connection beside the migration.

Waiting must never hold the migration's locks.  So rolekit waits on this
connection -- for the advisory lock of another deploy, for the old member's
sessions to drain, for terminated backends to go -- before the migration
transaction starts or after it committed, never inside it.  The connection
holds no transaction between statements, so it blocks nobody.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg2
import sqlalchemy.exc
from psycopg2 import sql
from sqlalchemy import Connection, create_engine, pool

from rolekit.errors import BusyError, UnreachableError, first_line
from rolekit.pg.catalog import PG15

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: the advisory lock every rolekit upgrade of a database holds while it runs
RUN_LOCK_KEY = 0x726F6C656B6974  # "rolekit"
#: advisory locks of ``rolekit rotate FAMILY`` are (this class, crc32(FAMILY))
ROTATE_LOCK_CLASS = 0x726B


class ControlConnection:
    """An autocommit psycopg2 connection to the project's database."""

    def __init__(self, dbapi_connection: Any) -> None:
        self._conn = dbapi_connection
        self.server_version: int = dbapi_connection.server_version

    @classmethod
    @contextlib.contextmanager
    def open(cls, url: str, *, application_name: str = "rolekit") -> Iterator[ControlConnection]:
        """Connect like the migration does (same URL, same driver options)."""
        engine = create_engine(
            url,
            poolclass=pool.NullPool,
            connect_args={"application_name": application_name},
        )
        try:
            raw = engine.raw_connection()
        except (sqlalchemy.exc.DBAPIError, psycopg2.Error) as exc:
            raise UnreachableError(f"cannot connect to the database: {first_line(exc)}") from None
        # Detached: SQLAlchemy would roll back on a connection the server may
        # have closed (a restart during a drain) and log a traceback for it.
        raw.detach()
        dbapi = raw.dbapi_connection
        assert dbapi is not None
        try:
            dbapi.autocommit = True
            yield cls(dbapi)
        finally:
            with contextlib.suppress(Exception):
                dbapi.close()
            engine.dispose()

    @classmethod
    @contextlib.contextmanager
    def borrow(cls, connection: Connection) -> Iterator[ControlConnection]:
        """Use the migration's connection between its transactions, in autocommit.

        It must not be inside a transaction: rolekit waits here, and must not
        hold what the transaction locked.  The session-level run lock taken
        here lasts until the connection closes.
        """
        if connection.in_transaction():
            raise RuntimeError("rolekit cannot wait inside the migration transaction")
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        dbapi.autocommit = True
        try:
            yield cls(dbapi)
        except BaseException:
            # A broken connection (a restart during a drain) may surface as
            # another error (the drain's "lost sight of"); SQLAlchemy did not
            # see it break: tell it, or it would roll back a dead connection
            # and log a traceback for it
            if dbapi.closed:
                connection.invalidate()
            raise
        finally:
            if not dbapi.closed:
                dbapi.autocommit = False

    @property
    def dbapi_connection(self) -> Any:
        return self._conn

    def fetchall(
        self, stmt: sql.Composable, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with self._conn.cursor() as cur:
            cur.execute(stmt, params)
            return list(cur.fetchall()) if cur.description else []

    def scalar(self, stmt: sql.Composable, params: Sequence[Any] | None = None) -> Any:
        rows = self.fetchall(stmt, params)
        return rows[0][0] if rows else None

    # -- advisory locks -------------------------------------------------------

    def _holders(self, where: sql.Composable, params: Sequence[Any]) -> str:
        rows = self.fetchall(
            sql.SQL(
                "SELECT l.pid, coalesce(a.usename::text, '?'), coalesce(a.application_name, '')"
                " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database()) AND {}"
            ).format(where),
            params,
        )
        return (
            ", ".join(
                f"backend {pid} ({user}, {app or 'no application_name'})" for pid, user, app in rows
            )
            or "a session that just ended"
        )

    def acquire_run_lock(self, *, timeout: float, progress: Progress) -> None:
        """Take the run lock, waiting at most *timeout* seconds and saying who holds it.

        A session-level lock on this connection: it is released when the
        connection closes, also when the process is killed.  The same
        statement keeps ``log_transaction_sample_rate`` from logging the
        migration transaction, where the user may: the server decides on
        sampling when a transaction starts, too early for rolekit's
        ``SET LOCAL`` around a verifier.
        """
        may_set = "rolsuper"
        if self.server_version >= PG15:
            may_set += " OR has_parameter_privilege('log_transaction_sample_rate', 'SET')"
        attempt = sql.SQL(
            "SELECT pg_try_advisory_lock(%s), (SELECT set_config('log_transaction_sample_rate',"
            " '0', false) FROM pg_roles WHERE rolname = current_user AND ({}))"
        ).format(sql.SQL(may_set))
        started = time.monotonic()
        reported = -1.0
        key_where = sql.SQL("((l.classid::bigint << 32) | l.objid::bigint) = %s AND l.objsubid = 1")
        while not self.scalar(attempt, (RUN_LOCK_KEY,)):
            waited = time.monotonic() - started
            holders = self._holders(key_where, (RUN_LOCK_KEY,))
            if waited >= timeout:
                raise BusyError(
                    f"another rolekit run holds this database's lock ({holders}) and did not "
                    f"finish within {timeout:.0f}s; nothing was changed. Wait for it, or raise "
                    "-x lock_wait=S ([rolekit] lock_wait)"
                )
            if waited - reported >= 5 or reported < 0:
                progress(
                    f"lock: waiting for another rolekit run ({holders}); "
                    f"{waited:.0f}s of {timeout:.0f}s"
                )
                reported = waited
            time.sleep(0.2)
        if reported >= 0:
            progress(f"lock: acquired after {time.monotonic() - started:.1f}s")

    def try_rotate_lock(self, family: str) -> None:
        """Take the lock of ``rolekit rotate FAMILY`` or refuse at once (exit 4)."""
        key = zlib.crc32(family.encode()) & 0x7FFFFFFF
        if self.scalar(sql.SQL("SELECT pg_try_advisory_lock(%s, %s)"), (ROTATE_LOCK_CLASS, key)):
            return
        holders = self._holders(
            sql.SQL("l.classid = %s AND l.objid = %s AND l.objsubid = 2"), (ROTATE_LOCK_CLASS, key)
        )
        raise BusyError(
            f"another 'rolekit rotate {family}' is running against this database ({holders}); "
            "nothing was changed. Let it finish, then re-run"
        )
