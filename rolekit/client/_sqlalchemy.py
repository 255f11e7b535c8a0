"""SQLAlchemy wiring: an engine whose pool follows the provider (see the package docs).

Works for the synchronous drivers psycopg2 and psycopg (3), and for the async
engines of asyncpg and psycopg: an ``AsyncEngine`` pools through its
``sync_engine``, whose ``do_connect`` and ``checkout`` events run inside
SQLAlchemy's greenlet on the event loop.  There the provider is never read
on the loop: its reads go to a worker thread (``await_only`` on
``asyncio.to_thread``) and the checkout asks a :class:`LoopPreference`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.util import await_only

from rolekit.client._fallback import open_with_fallback
from rolekit.client._placement import (
    DEFAULT_FALLBACK_RECYCLE,
    DEFAULT_MAX_LIFETIME,
    LoopPreference,
    Placement,
    move_reason,
)
from rolekit.client._provider import CredentialsProvider
from rolekit.project.credentials import shown
from rolekit.secrets import Secret

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

#: seconds after which :func:`create_engine`'s pool replaces any connection
DEFAULT_POOL_RECYCLE: Final = int(DEFAULT_MAX_LIFETIME)
#: key of a pooled connection's placement in ``ConnectionPoolEntry.info``
_INFO_KEY: Final = "rolekit.client"
#: drivers whose connect errors rolekit knows: sync, async
_SYNC_DRIVERS: Final = ("psycopg2", "psycopg")
_ASYNC_DRIVERS: Final = ("asyncpg", "psycopg")
#: what an async URL may name: SQLAlchemy also spells psycopg's async dialect so
_ASYNC_URL_DRIVERS: Final = (*_ASYNC_DRIVERS, "psycopg_async")

_attached: weakref.WeakKeyDictionary[Engine, CredentialsProvider] = weakref.WeakKeyDictionary()
_attach_lock = threading.Lock()

__all__ = [
    "DEFAULT_FALLBACK_RECYCLE",
    "DEFAULT_POOL_RECYCLE",
    "attach",
    "create_async_engine",
    "create_engine",
]


def attach(
    engine: Engine | AsyncEngine,
    provider: CredentialsProvider,
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
) -> None:
    """Make an existing engine (sync or async) log in through ``provider``.

    Installs a ``do_connect`` listener, which opens each new connection as
    the preferred member with the fallback of :func:`connect` (user and
    password in the engine's URL or ``connect_args`` are ignored), and a
    ``checkout`` listener, which replaces a pooled connection once it is on
    the wrong member (see the package documentation for exactly when).  An
    ``AsyncEngine`` is attached through its ``sync_engine``.  Set
    ``pool_pre_ping=True`` and a ``pool_recycle`` on the engine yourself, or
    use :func:`create_engine` / :func:`create_async_engine`, which do.

    :param fallback_recycle: seconds after which a connection opened as the
        non-preferred member (a fallback) retries the preferred one at
        checkout; negative to leave it to ``pool_recycle``.
    :raises ValueError: the engine's driver is not psycopg2, psycopg or
        asyncpg, or it is already attached to another provider.
    """
    sync_engine: Engine = engine if isinstance(engine, Engine) else engine.sync_engine
    dialect = sync_engine.dialect
    is_async = bool(getattr(dialect, "is_async", False))
    if dialect.driver not in (_ASYNC_DRIVERS if is_async else _SYNC_DRIVERS):
        raise ValueError(
            f"rolekit.client supports psycopg2 and psycopg engines, and async engines on "
            f"asyncpg or psycopg; not {dialect.driver!r}{' (async)' if is_async else ''}"
        )
    with _attach_lock:
        existing = _attached.get(sync_engine)
        if existing is provider:
            return
        if existing is not None:
            raise ValueError(f"{engine!r} is already attached to {existing!r}")
        _attached[sync_engine] = provider
    preference = LoopPreference(provider) if is_async else None

    def do_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        return _connect(provider, dialect, record, cargs, cparams, is_async=is_async)

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        placed = record.info.get(_INFO_KEY)
        if not isinstance(placed, Placement):
            return
        if preference is not None:
            preferred = preference.preferred(placed.preferred)
        else:
            preferred = provider.current().preferred[0]
        reason = move_reason(placed, preferred, provider, fallback_recycle)
        if reason is not None:
            logger.debug("replacing a pooled connection of %s: %s", shown(placed.user), reason)
            raise sa_exc.DisconnectionError(f"rolekit: {reason}")

    event.listen(sync_engine, "do_connect", do_connect)
    event.listen(sync_engine, "checkout", checkout)


def _off_loop(fn: Any, *args: Any) -> Any:
    """Run a provider read in a worker thread from SQLAlchemy's greenlet (async engines)."""
    return await_only(asyncio.to_thread(fn, *args))


def _connect(
    provider: CredentialsProvider,
    dialect: Any,
    record: Any,
    cargs: Any,
    cparams: dict[str, Any],
    *,
    is_async: bool,
) -> Any:
    """Open a pool connection as the preferred member; remember where it went."""
    params = {k: v for k, v in cparams.items() if k not in ("user", "password")}

    def open_(user: str, password: Secret) -> Any:
        return dialect.connect(*cargs, **params, user=user, password=password.reveal())

    if is_async:
        connection, user, preferred = open_with_fallback(provider, open_, call=_off_loop)
    else:
        connection, user, preferred = open_with_fallback(provider, open_)
    if record is not None:
        record.info[_INFO_KEY] = Placement.now(user, preferred)
    return connection


def _url(url: str | URL, default_driver: str, allowed: tuple[str, ...]) -> URL:
    """A PostgreSQL URL without credentials, with an explicit driver rolekit supports."""
    parsed = make_url(url)
    if parsed.username is not None or parsed.password is not None:
        raise ValueError(
            "the URL must not carry a user or password: the credentials provider supplies them"
        )
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"rolekit.client needs a PostgreSQL URL, not {parsed.drivername!r}")
    if parsed.drivername == "postgresql":
        # name the driver: SQLAlchemy's default differs between versions
        parsed = parsed.set(drivername=f"postgresql+{default_driver}")
    if parsed.get_driver_name() not in allowed:
        raise ValueError(
            f"rolekit.client supports {', '.join(allowed)} here, not {parsed.drivername!r}"
        )
    return parsed


def create_engine(
    url: str | URL,
    provider: CredentialsProvider,
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **engine_kw: Any,
) -> Engine:
    """A SQLAlchemy engine that logs in through ``provider``.

    ``url`` names host, port and database only (``postgresql://db:5432/app``,
    ``postgresql+psycopg2://...`` or ``postgresql+psycopg://...``):
    credentials come from the provider, so a user or password in the URL is
    refused rather than silently ignored.  ``pool_pre_ping`` defaults to
    true and ``pool_recycle`` to :data:`DEFAULT_POOL_RECYCLE` seconds, which
    bounds how long any pooled connection can stay on a member (see the
    package documentation); other keyword arguments go to
    :func:`sqlalchemy.create_engine`.

    :raises ValueError: the URL carries credentials, is not PostgreSQL, or
        names another driver.
    """
    parsed = _url(url, "psycopg2", _SYNC_DRIVERS)
    engine_kw.setdefault("pool_pre_ping", True)
    engine_kw.setdefault("pool_recycle", DEFAULT_POOL_RECYCLE)
    engine = sqlalchemy.create_engine(parsed, **engine_kw)
    attach(engine, provider, fallback_recycle=fallback_recycle)
    return engine


def create_async_engine(
    url: str | URL,
    provider: CredentialsProvider,
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **engine_kw: Any,
) -> AsyncEngine:
    """:func:`create_engine` for SQLAlchemy's asyncio extension.

    ``url`` is ``postgresql+asyncpg://host:port/db`` or
    ``postgresql+psycopg://host:port/db`` (``postgresql://`` means asyncpg).
    The provider's files are never read on the event loop.
    """
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    parsed = _url(url, "asyncpg", _ASYNC_URL_DRIVERS)
    engine_kw.setdefault("pool_pre_ping", True)
    engine_kw.setdefault("pool_recycle", DEFAULT_POOL_RECYCLE)
    engine = sa_create_async_engine(parsed, **engine_kw)
    attach(engine, provider, fallback_recycle=fallback_recycle)
    return engine
