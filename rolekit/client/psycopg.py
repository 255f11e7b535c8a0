"""psycopg 3 through a provider: connections, and pools that follow a rotation.

``pip install rolekit[psycopg]``; importing this module imports psycopg and
psycopg_pool (``import rolekit.client`` alone does not).

* :func:`connect` / :func:`connect_async` open one connection as the
  preferred member, with the fallback of :func:`rolekit.client.connect`.
* :func:`connection_class` / :func:`async_connection_class` make a
  ``psycopg.Connection`` subclass whose ``connect()`` does the same, for
  ``psycopg_pool``'s ``connection_class``.
* :func:`connection_pool` / :func:`async_connection_pool` build a
  ``psycopg_pool`` pool with that class whose connections move to a newly
  preferred member without making anyone wait: the pool is drained when a
  connection on the wrong member is handed out (the rules of the SQLAlchemy
  pool: see :func:`rolekit.client._placement.move_reason`; see
  :class:`_Mover`); ``max_lifetime`` is 300 s.

The async variants read the provider in a worker thread, never on the event
loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import psycopg
import psycopg_pool
from psycopg import conninfo as _conninfo

from rolekit.client._fallback import (
    open_with_fallback,
    open_with_fallback_async,
    refuse_credentials,
)
from rolekit.client._placement import (
    DEFAULT_FALLBACK_RECYCLE,
    DEFAULT_MAX_LIFETIME,
    LoopPreference,
    Placement,
    move_reason,
)
from rolekit.client._provider import CredentialsProvider
from rolekit.secrets import Secret

__all__ = [
    "async_connection_class",
    "async_connection_pool",
    "connect",
    "connect_async",
    "connection_class",
    "connection_pool",
]

logger = logging.getLogger(__name__)

#: attribute of a connection opened through a provider: its :class:`Placement`
_PLACEMENT = "_rolekit_placement"


class MovedError(psycopg.OperationalError):
    """Raised by a pool's ``reset``: the returned connection is on the wrong
    member, so the pool discards it and opens a replacement as the preferred one."""


def connect(provider: CredentialsProvider, conninfo: str = "", **kwargs: Any) -> Any:
    """``psycopg.connect()`` as the preferred member, falling back on a rejected login.

    :raises BothMembersFailedError: every known member was rejected.
    :raises psycopg.OperationalError: any other failure to connect (no retry).
    """
    refuse_credentials(kwargs, "connect()")
    return connection_class(provider).connect(conninfo, **kwargs)


async def connect_async(provider: CredentialsProvider, conninfo: str = "", **kwargs: Any) -> Any:
    """``psycopg.AsyncConnection.connect()`` as the preferred member, with the fallback."""
    refuse_credentials(kwargs, "connect_async()")
    return await async_connection_class(provider).connect(conninfo, **kwargs)


def connection_class(
    provider: CredentialsProvider, base: type[psycopg.Connection[Any]] = psycopg.Connection
) -> type[psycopg.Connection[Any]]:
    """A *base* subclass whose ``connect()`` logs in through *provider*.

    ``user``/``password`` passed to ``connect()`` (by a pool's ``kwargs``, a
    conninfo) are replaced by the provider's.
    """

    class ProviderConnection(base):  # type: ignore[valid-type,misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("user", "password")}
            parent: Any = super()

            def open_(user: str, password: Secret) -> Any:
                return parent.connect(conninfo, user=user, password=password.reveal(), **kwargs)

            conn, user, preferred = open_with_fallback(provider, open_)
            setattr(conn, _PLACEMENT, Placement.now(user, preferred))
            return conn

    ProviderConnection.__qualname__ = f"{base.__qualname__} through {provider.description}"
    return ProviderConnection


def async_connection_class(
    provider: CredentialsProvider,
    base: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
) -> type[psycopg.AsyncConnection[Any]]:
    """:func:`connection_class` for ``psycopg.AsyncConnection``."""

    class ProviderAsyncConnection(base):  # type: ignore[valid-type,misc]
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("user", "password")}
            parent: Any = super()

            async def open_(user: str, password: Secret) -> Any:
                return await parent.connect(
                    conninfo, user=user, password=password.reveal(), **kwargs
                )

            conn, user, preferred = await open_with_fallback_async(provider, open_)
            setattr(conn, _PLACEMENT, Placement.now(user, preferred))
            return conn

    ProviderAsyncConnection.__qualname__ = f"{base.__qualname__} through {provider.description}"
    return ProviderAsyncConnection


def _refuse_pool_arguments(conninfo: str, pool_kw: dict[str, Any], what: str) -> None:
    """User, password and connection class come from rolekit: refuse the caller's."""
    if "connection_class" in pool_kw:
        raise TypeError(f"{what} takes no 'connection_class': rolekit supplies it")
    refuse_credentials(dict(pool_kw.get("kwargs") or {}), f"{what}'s kwargs")
    given = _conninfo.conninfo_to_dict(conninfo)
    for key in ("user", "password"):
        if key in given:
            raise ValueError(
                f"{what}: the conninfo must not carry a {key}: the provider supplies it"
            )


#: psycopg_pool 3.3 added ``drain()``; before it, connections move when returned
_POOLS_DRAIN: Final = hasattr(psycopg_pool.ConnectionPool, "drain")


class _Mover:
    """When a pool's connections move to another member, for both pool kinds.

    A connection handed out on the wrong member (the source now prefers
    another member, or it was opened by a fallback and is due to retry the
    preferred one: :func:`~rolekit.client._placement.move_reason`) drains
    the pool (``pool.drain()``): idle connections are replaced at once, those
    in use when they come back.  The connection being handed out still works
    (during the overlap both members may log in), so nobody waits for the
    move, and psycopg_pool's ``check`` never fails (a failed check costs the
    request a second of back-off).  At most one drain per preferred member,
    and then one per ``fallback_recycle`` seconds.

    A pool without ``drain()`` (psycopg_pool < 3.3) discards such a
    connection when it is returned instead: its ``reset`` callback raises.
    """

    def __init__(self, provider: CredentialsProvider, fallback_recycle: float) -> None:
        self.provider, self.fallback_recycle = provider, fallback_recycle
        self._lock = threading.Lock()
        self._drained_for: str | None = None
        self._drained_at = 0.0

    def reason(self, conn: Any, preferred: str) -> str | None:
        """Why *conn* must be replaced, or ``None``."""
        placed = getattr(conn, _PLACEMENT, None)
        if not isinstance(placed, Placement):
            return None
        return move_reason(placed, preferred, self.provider, self.fallback_recycle)

    def must_drain(self, conn: Any, preferred: str) -> bool:
        """Whether the pool must be drained now, seeing *conn* handed out."""
        if not _POOLS_DRAIN or (reason := self.reason(conn, preferred)) is None:
            return False
        now = time.monotonic()
        with self._lock:
            if self._drained_for == preferred and now - self._drained_at < self.fallback_recycle:
                return False
            self._drained_for, self._drained_at = preferred, now
        logger.info("replacing the pool's connections: %s", reason)
        return True


def connection_pool(
    provider: CredentialsProvider,
    conninfo: str = "",
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **pool_kw: Any,
) -> psycopg_pool.ConnectionPool[Any]:
    """A ``psycopg_pool.ConnectionPool`` whose connections log in through *provider*
    and move to a newly preferred member (see :class:`_Mover`).

    *conninfo* names host, port and database (a user or password in it, or in
    ``kwargs=``, is refused).  ``max_lifetime`` defaults to 300 s.  A
    ``check`` or ``reset`` you pass runs too.  Other keyword arguments go to
    the pool (``min_size``, ``max_size``, ``open``...).
    """
    _refuse_pool_arguments(conninfo, pool_kw, "connection_pool()")
    user_check = pool_kw.pop("check", None)
    user_reset = pool_kw.pop("reset", None)
    pool_kw.setdefault("max_lifetime", DEFAULT_MAX_LIFETIME)
    mover = _Mover(provider, fallback_recycle)
    pools: list[psycopg_pool.ConnectionPool[Any]] = []

    def check(conn: Any) -> None:
        if pools and mover.must_drain(conn, provider.current().preferred[0]):
            pools[0].drain()
        if user_check is not None:
            user_check(conn)

    def reset(conn: Any) -> None:
        if not _POOLS_DRAIN and (reason := mover.reason(conn, provider.current().preferred[0])):
            raise MovedError(f"rolekit: {reason}")
        if user_reset is not None:
            user_reset(conn)

    # a reset callback makes the pool return connections through its worker
    # thread: only where it is needed
    if user_reset is not None or not _POOLS_DRAIN:
        pool_kw["reset"] = reset
    pool = psycopg_pool.ConnectionPool(
        conninfo, connection_class=connection_class(provider), check=check, **pool_kw
    )
    pools.append(pool)
    return pool


def async_connection_pool(
    provider: CredentialsProvider,
    conninfo: str = "",
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **pool_kw: Any,
) -> psycopg_pool.AsyncConnectionPool[Any]:
    """:func:`connection_pool` for asyncio: ``psycopg_pool.AsyncConnectionPool``.

    Create it with ``open=False`` and ``await pool.open()`` (psycopg_pool's
    advice), or use it as ``async with``.  The provider is never read on the
    event loop (see :class:`~rolekit.client._placement.LoopPreference`).
    """
    _refuse_pool_arguments(conninfo, pool_kw, "async_connection_pool()")
    user_check = pool_kw.pop("check", None)
    user_reset = pool_kw.pop("reset", None)
    pool_kw.setdefault("max_lifetime", DEFAULT_MAX_LIFETIME)
    mover = _Mover(provider, fallback_recycle)
    preference = LoopPreference(provider)
    pools: list[psycopg_pool.AsyncConnectionPool[Any]] = []

    def preferred_now(conn: Any) -> str:
        placed = getattr(conn, _PLACEMENT, None)
        fallback = placed.preferred if isinstance(placed, Placement) else ""
        return preference.preferred(fallback)

    async def check(conn: Any) -> None:
        if pools and mover.must_drain(conn, preferred_now(conn)):
            await pools[0].drain()
        if user_check is not None:
            await user_check(conn)

    async def reset(conn: Any) -> None:
        if not _POOLS_DRAIN and (reason := mover.reason(conn, preferred_now(conn))):
            raise MovedError(f"rolekit: {reason}")
        if user_reset is not None:
            await user_reset(conn)

    if user_reset is not None or not _POOLS_DRAIN:
        pool_kw["reset"] = reset
    pool = psycopg_pool.AsyncConnectionPool(
        conninfo, connection_class=async_connection_class(provider), check=check, **pool_kw
    )
    pools.append(pool)
    return pool
