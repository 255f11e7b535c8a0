"""PgBouncer in front of the database: who still uses the old member through it.

A client of PgBouncer holds no backend of its own between queries (transaction
pooling) or holds one PgBouncer opened (session pooling), so
``pg_stat_activity`` tells only part of the story.  rolekit asks PgBouncer's
admin console (``SHOW CLIENTS``, ``SHOW SERVERS``): a client logged in as the
leaving member is a user of it, and a server connection of the leaving member
that no client is linked to is an idle pool connection, which rolekit closes
(by the ``remote_pid`` PgBouncer reports) instead of waiting out
``server_idle_timeout``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import psycopg2

from rolekit.errors import RolekitError, UnreachableError, first_line
from rolekit.project.config import POOLERS_SOURCE, parse_url


class PoolerClient(NamedTuple):
    """A client of PgBouncer logged in as a member (``SHOW CLIENTS``)."""

    pooler: str
    user: str
    addr: str
    application_name: str


class IdleServer(NamedTuple):
    """A server connection of a member no client is linked to (``SHOW SERVERS``)."""

    pooler: str
    user: str
    #: where PgBouncer connected, ``host:port``
    server: str
    remote_pid: int


def connect_params(url: str) -> dict[str, Any]:
    """libpq keywords of a ``postgresql://`` URL (SQLAlchemy's form accepted too)."""
    parsed = parse_url(url, POOLERS_SOURCE)
    params: dict[str, Any] = parsed.translate_connect_args(database="dbname", username="user")
    params.update({k: v for k, v in parsed.query.items() if isinstance(v, str)})
    return params


class Pooler:
    """One PgBouncer admin console, in autocommit (it accepts no transactions)."""

    def __init__(self, name: str, connection: Any) -> None:
        self.name = name
        self._conn = connection

    @classmethod
    @contextlib.contextmanager
    def open(cls, url: str) -> Iterator[Pooler]:
        params = connect_params(url)
        name = f"pooler {params.get('host', 'local')}:{params.get('port', 6432)}"
        params.setdefault("dbname", "pgbouncer")
        try:
            conn = psycopg2.connect(**params, connect_timeout=10)
        except psycopg2.Error as exc:
            raise UnreachableError(
                f"cannot reach {name}'s admin console: {first_line(exc)}; rolekit cannot see who "
                "uses the old member through it, so it refuses (fix [rolekit] poolers)"
            ) from None
        conn.autocommit = True
        try:
            yield cls(name, conn)
        finally:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _show(self, what: str) -> list[dict[str, Any]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(f"SHOW {what}")  # a console command: no parameters
                names = [d[0] for d in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except psycopg2.Error as exc:
            raise RolekitError(
                f"{self.name}: SHOW {what} failed: {first_line(exc)}; the console user needs to "
                "be in admin_users or stats_users"
            ) from None

    def clients(self, members: Iterable[str]) -> list[PoolerClient]:
        wanted = set(members)
        return [
            PoolerClient(
                self.name, row["user"], f"{row.get('addr')}", row.get("application_name") or ""
            )
            for row in self._show("CLIENTS")
            if row.get("user") in wanted
        ]

    def idle_servers(self, members: Iterable[str]) -> list[IdleServer]:
        """Server connections of *members* that no client uses (none while a client of
        the member exists: it could be handed one at any moment)."""
        wanted = set(members)
        busy = {c.user for c in self.clients(wanted)}
        return [
            IdleServer(
                self.name,
                row["user"],
                f"{row.get('addr')}:{row.get('port')}",
                int(row["remote_pid"]),
            )
            for row in self._show("SERVERS")
            if row.get("user") in wanted - busy and not row.get("link") and row.get("remote_pid")
        ]


@contextlib.contextmanager
def open_poolers(urls: Sequence[str]) -> Iterator[list[Pooler]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Pooler.open(url)) for url in urls]
