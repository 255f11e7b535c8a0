"""SQLAlchemy wiring: an engine whose pool follows the provider (see the package docs)."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url

from rolekit.client._fallback import open_with_fallback
from rolekit.client._provider import CredentialsProvider
from rolekit.secrets import Secret

logger = logging.getLogger(__name__)

#: seconds after which :func:`create_engine`'s pool replaces any connection
DEFAULT_POOL_RECYCLE: Final = 300
#: seconds after which a connection opened by a fallback retries the preferred member
DEFAULT_FALLBACK_RECYCLE: Final = 10.0
#: key of a pooled connection's placement in ``ConnectionPoolEntry.info``
_INFO_KEY: Final = "rolekit.client"


@dataclass(frozen=True, slots=True)
class _Placement:
    """Which member a pooled connection logged in as, and why."""

    user: str
    #: the member the source preferred when the connection was opened
    preferred: str
    opened: float


_attached: weakref.WeakKeyDictionary[Engine, CredentialsProvider] = weakref.WeakKeyDictionary()
_attach_lock = threading.Lock()


def attach(
    engine: Engine,
    provider: CredentialsProvider,
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
) -> None:
    """Make an existing psycopg2 engine log in through ``provider``.

    Installs a ``do_connect`` listener, which opens each new connection as
    the preferred member with the fallback of :func:`connect` (user and
    password in the engine's URL or ``connect_args`` are ignored), and a
    ``checkout`` listener, which replaces a pooled connection once it is on
    the wrong member (see the module documentation for exactly when).  Set
    ``pool_pre_ping=True`` and a ``pool_recycle`` on the engine yourself, or
    use :func:`create_engine`, which does.

    :param fallback_recycle: seconds after which a connection opened as the
        non-preferred member (a fallback) retries the preferred one at
        checkout; negative to leave it to ``pool_recycle``.
    :raises ValueError: the engine does not use psycopg2, or is already
        attached to another provider.
    """
    if engine.dialect.driver != "psycopg2":
        raise ValueError(
            f"rolekit.client supports the psycopg2 driver only, not {engine.dialect.driver!r}"
        )
    with _attach_lock:
        existing = _attached.get(engine)
        if existing is provider:
            return
        if existing is not None:
            raise ValueError(f"{engine!r} is already attached to {existing!r}")
        _attached[engine] = provider

    def do_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        return _connect(provider, dialect, record, cargs, cparams)

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        _check_placement(provider, record, fallback_recycle)

    event.listen(engine, "do_connect", do_connect)
    event.listen(engine, "checkout", checkout)


def _connect(
    provider: CredentialsProvider, dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]
) -> Any:
    """Open a pool connection as the preferred member; remember where it went."""
    params = {k: v for k, v in cparams.items() if k not in ("user", "password")}

    def open_(user: str, password: Secret) -> Any:
        return dialect.connect(*cargs, **params, user=user, password=password.reveal())

    connection, user, preferred = open_with_fallback(provider, open_)
    if record is not None:
        record.info[_INFO_KEY] = _Placement(user, preferred, time.monotonic())
    return connection


def _check_placement(provider: CredentialsProvider, record: Any, fallback_recycle: float) -> None:
    """At checkout: replace a pooled connection that is on the wrong member."""
    placed = record.info.get(_INFO_KEY)
    if not isinstance(placed, _Placement):
        return
    preferred = provider.current().preferred[0]
    if placed.user == preferred:
        return
    if placed.preferred != preferred:
        logger.debug(
            "replacing a pooled connection of %s: %s is preferred now", placed.user, preferred
        )
        raise sa_exc.DisconnectionError(f"rolekit: moving from {placed.user} to {preferred}")
    if (
        fallback_recycle >= 0
        and time.monotonic() - placed.opened >= fallback_recycle
        and not provider.recently_rejected(preferred, fallback_recycle)
    ):
        logger.debug("replacing a fallback connection of %s: retrying %s", placed.user, preferred)
        raise sa_exc.DisconnectionError(f"rolekit: retrying {preferred}")


def create_engine(
    url: str | URL,
    provider: CredentialsProvider,
    *,
    fallback_recycle: float = DEFAULT_FALLBACK_RECYCLE,
    **engine_kw: Any,
) -> Engine:
    """A SQLAlchemy engine that logs in through ``provider``.

    ``url`` names host, port and database only (``postgresql://db:5432/app``
    or ``postgresql+psycopg2://...``): credentials come from the provider,
    so a user or password in the URL is refused rather than silently
    ignored.  ``pool_pre_ping`` defaults to true and ``pool_recycle`` to
    :data:`DEFAULT_POOL_RECYCLE` seconds, which bounds how long any pooled
    connection can stay on a member (see the module documentation); other
    keyword arguments go to :func:`sqlalchemy.create_engine`.

    :raises ValueError: the URL carries credentials, is not PostgreSQL, or
        names a driver other than psycopg2.
    """
    parsed = make_url(url)
    if parsed.username is not None or parsed.password is not None:
        raise ValueError(
            "the URL must not carry a user or password: the credentials provider supplies them"
        )
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"rolekit.client needs a PostgreSQL URL, not {parsed.drivername!r}")
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 defaults to psycopg 3; the fallback knows psycopg2's errors.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    elif parsed.drivername != "postgresql+psycopg2":
        raise ValueError(f"rolekit.client supports psycopg2 only, not {parsed.drivername!r}")
    engine_kw.setdefault("pool_pre_ping", True)
    engine_kw.setdefault("pool_recycle", DEFAULT_POOL_RECYCLE)
    engine = sqlalchemy.create_engine(parsed, **engine_kw)
    attach(engine, provider, fallback_recycle=fallback_recycle)
    return engine
