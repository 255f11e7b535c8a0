"""psycopg 3 through a provider: connections, and pools that follow a rotation.

``pip install rolekit[psycopg]``; importing this module imports psycopg and
psycopg_pool (``import rolekit.client`` alone does not).

* :func:`connect` / :func:`connect_async` open one connection as the
  preferred member, with the fallback of :func:`rolekit.client.connect`.
* :func:`connection_class` / :func:`async_connection_class` make a
  ``psycopg.Connection`` subclass whose ``connect()`` does the same, for
  ``psycopg_pool``'s ``connection_class``.
* :func:`connection_pool` / :func:`async_connection_pool` build a
  ``psycopg_pool`` pool with that class and a ``check`` that replaces a
  connection on the wrong member when it is handed out (the same rules as
  the SQLAlchemy pool: see :func:`rolekit.client._placement.move_reason`),
  plus a ``max_lifetime`` of 300 s as the upper bound.

The async variants read the provider in a worker thread, never on the event
loop.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool

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

#: attribute of a connection opened through a provider: its :class:`Placement`
_PLACEMENT = "_rolekit_placement"


class MovedError(psycopg.OperationalError):
    """Raised by a pool's check: the connection is on the wrong member.

    psycopg_pool puts a connection that fails its check back in the pool
    unless it is broken, so the check closes it first: the pool then opens a
    replacement (as the preferred member) and hands out another connection.
    """


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


def connection_pool(
    provider: CredentialsProvider,
    conninfo: str = "",
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **pool_kw: Any,
) -> psycopg_pool.ConnectionPool[Any]:
    """A ``psycopg_pool.ConnectionPool`` whose connections log in through *provider*
    and move to a newly preferred member when they are next handed out.

    ``max_lifetime`` defaults to 300 s; a ``check`` you pass runs after
    rolekit's (the default is the pool's liveness check).  Other keyword
    arguments go to the pool (``min_size``, ``max_size``, ``open``...).
    """
    user_check = pool_kw.pop("check", psycopg_pool.ConnectionPool.check_connection)
    pool_kw.setdefault("max_lifetime", DEFAULT_MAX_LIFETIME)

    def check(conn: Any) -> None:
        placed = getattr(conn, _PLACEMENT, None)
        if isinstance(placed, Placement):
            preferred = provider.current().preferred[0]
            if reason := move_reason(placed, preferred, provider, fallback_recycle):
                conn.close()  # the pool takes back a healthy connection; a closed one it replaces
                raise MovedError(f"rolekit: {reason}")
        user_check(conn)

    return psycopg_pool.ConnectionPool(
        conninfo, connection_class=connection_class(provider), check=check, **pool_kw
    )


def async_connection_pool(
    provider: CredentialsProvider,
    conninfo: str = "",
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **pool_kw: Any,
) -> psycopg_pool.AsyncConnectionPool[Any]:
    """:func:`connection_pool` for asyncio: ``psycopg_pool.AsyncConnectionPool``.

    Create it with ``open=False`` and ``await pool.open()`` (psycopg_pool's
    advice), or use it as ``async with``.
    """
    user_check = pool_kw.pop("check", psycopg_pool.AsyncConnectionPool.check_connection)
    pool_kw.setdefault("max_lifetime", DEFAULT_MAX_LIFETIME)
    preference = LoopPreference(provider)

    async def check(conn: Any) -> None:
        placed = getattr(conn, _PLACEMENT, None)
        if isinstance(placed, Placement):
            preferred = preference.preferred() or placed.preferred
            if reason := move_reason(placed, preferred, provider, fallback_recycle):
                await conn.close()  # see connection_pool()
                raise MovedError(f"rolekit: {reason}")
        await user_check(conn)

    return psycopg_pool.AsyncConnectionPool(
        conninfo, connection_class=async_connection_class(provider), check=check, **pool_kw
    )
