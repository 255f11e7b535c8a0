"""asyncpg through a provider: connections, and a pool that follows a rotation.

``pip install rolekit[asyncpg]``; importing this module imports asyncpg
(``import rolekit.client`` alone does not).

asyncpg's callable ``password`` cannot follow a rotation on its own: the
two members have different *user* names.  So :func:`create_pool` passes
asyncpg's ``connect=`` hook, which logs in as the preferred member with the
fallback of :func:`rolekit.client.connect`, and runs a small watcher task
that calls ``Pool.expire_connections()`` once the provider prefers another
member (or a fallback connection is due to retry the preferred one), then
acquires each idle connection once, so that asyncpg replaces it at once; a
connection in use is replaced when it is released, never while in use.  The provider is read in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import asyncpg

from rolekit.client._fallback import open_with_fallback_async, refuse_credentials
from rolekit.client._placement import (
    DEFAULT_FALLBACK_RECYCLE,
    DEFAULT_MAX_LIFETIME,
    LoopPreference,
    Placement,
    move_reason,
)
from rolekit.client._provider import CredentialsProvider
from rolekit.secrets import Secret

__all__ = ["connect", "create_pool"]

logger = logging.getLogger(__name__)

#: seconds between two looks of a pool's watcher at the provider
WATCH_INTERVAL: Final = 0.5
#: seconds the watcher waits for an idle connection to replace
IDLE_ACQUIRE_TIMEOUT: Final = 5.0


async def _open(
    provider: CredentialsProvider, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Placement]:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("user", "password")}

    async def open_(user: str, password: Secret) -> Any:
        return await asyncpg.connect(*args, user=user, password=password.reveal(), **kwargs)

    conn, user, preferred = await open_with_fallback_async(provider, open_)
    return conn, Placement.now(user, preferred)


async def connect(provider: CredentialsProvider, dsn: str | None = None, **kwargs: Any) -> Any:
    """``asyncpg.connect()`` as the preferred member, falling back on a rejected login.

    :raises BothMembersFailedError: every known member was rejected.
    :raises OSError, asyncpg.PostgresError: any other failure (no retry).
    """
    refuse_credentials(kwargs, "connect()")
    _refuse_dsn_credentials(dsn, "connect()")
    return (await _open(provider, (dsn,), kwargs))[0]


def _refuse_dsn_credentials(dsn: str | None, what: str) -> None:
    if dsn is None:
        return
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    if parts.username or parts.password or "user" in query or "password" in query:
        raise ValueError(
            f"{what}: the DSN must not carry a user or password: the provider supplies them"
        )


async def create_pool(
    provider: CredentialsProvider,
    dsn: str | None = None,
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **pool_kw: Any,
) -> asyncpg.Pool:
    """``asyncpg.create_pool()`` whose connections log in through *provider*.

    ``max_inactive_connection_lifetime`` defaults to 300 s.  Other keyword
    arguments go to asyncpg (``min_size``, ``max_size``, ``init``...).  The
    pool is returned initialised; close it with ``await pool.close()``
    (the watcher ends with it).
    """
    refuse_credentials(pool_kw, "create_pool()")
    if "connect" in pool_kw:
        raise TypeError("create_pool() takes no 'connect': rolekit logs in through it")
    _refuse_dsn_credentials(dsn, "create_pool()")
    pool_kw.setdefault("max_inactive_connection_lifetime", DEFAULT_MAX_LIFETIME)
    placements: weakref.WeakKeyDictionary[Any, Placement] = weakref.WeakKeyDictionary()

    async def connect_hook(*args: Any, **kwargs: Any) -> Any:
        conn, placed = await _open(provider, args, kwargs)
        placements[conn] = placed
        return conn

    pool = await asyncpg.create_pool(dsn, connect=connect_hook, **pool_kw)
    watcher = asyncio.get_running_loop().create_task(
        _watch(pool, provider, placements, fallback_recycle), name="rolekit pool watcher"
    )
    # asyncio keeps only weak references to tasks: hold it until it ends
    # (asyncpg's Pool takes no weak reference, so the task is the key)
    _watchers.add(watcher)
    watcher.add_done_callback(_watchers.discard)
    return pool


_watchers: set[asyncio.Task[None]] = set()


async def _watch(
    pool: asyncpg.Pool,
    provider: CredentialsProvider,
    placements: weakref.WeakKeyDictionary[Any, Placement],
    fallback_recycle: float,
) -> None:
    """Expire the pool's connections when they are on the wrong member."""
    preference = LoopPreference(provider)
    with contextlib.suppress(asyncio.CancelledError):
        while not pool.is_closing():
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                preferred = await preference.fresh()
            except Exception:  # the provider logged it; the cached credentials stay
                continue
            reasons = {
                reason
                for placed in list(placements.values())
                if (reason := move_reason(placed, preferred, provider, fallback_recycle))
            }
            if reasons and not pool.is_closing():
                logger.info("moving the pool's connections: %s", ", ".join(sorted(reasons)))
                placements.clear()
                await pool.expire_connections()
                await _reconnect_idle(pool)


async def _reconnect_idle(pool: asyncpg.Pool) -> None:
    """Acquire and release each idle connection once, so that asyncpg replaces
    it now (an expired connection is replaced when acquired), not whenever the
    application next needs it: an idle connection on the old member would
    hold up the drain."""

    async def touch() -> None:
        try:
            async with pool.acquire(timeout=IDLE_ACQUIRE_TIMEOUT):
                pass
        except Exception as exc:  # busy, closing, or the database refused: the next acquire retries
            logger.debug("could not replace an idle connection now: %s", type(exc).__name__)

    await asyncio.gather(*(touch() for _ in range(pool.get_idle_size())))
