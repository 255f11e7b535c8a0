"""Which member a pooled connection logged in as, and when a pool must replace it.

A connection's login is fixed when it is opened, so a pool follows a
rotation by replacing connections.  Every pool integration (SQLAlchemy,
psycopg_pool, asyncpg) records a :class:`Placement` when it opens a
connection and asks :func:`move_reason` when it hands one out.

On an event loop the provider must not be read (a file, a vault):
:class:`LoopPreference` answers from the cached credentials and refreshes
them in a worker thread, at most every half second.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

from rolekit.client._provider import CredentialsProvider
from rolekit.project.credentials import shown

#: seconds after which a connection opened by a fallback retries the preferred member
DEFAULT_FALLBACK_RECYCLE: Final = 10.0
#: seconds after which a pool replaces any connection (pool_recycle, max_lifetime...)
DEFAULT_MAX_LIFETIME: Final = 300.0
#: seconds between two refreshes of the provider from an event loop
LOOP_REFRESH_INTERVAL: Final = 0.5


@dataclass(frozen=True, slots=True)
class Placement:
    """Which member a pooled connection logged in as, and why."""

    user: str
    #: the member the source preferred when the connection was opened
    preferred: str
    opened: float

    @classmethod
    def now(cls, user: str, preferred: str) -> Placement:
        return cls(user, preferred, time.monotonic())


def move_reason(
    placed: Placement,
    preferred: str,
    provider: CredentialsProvider,
    fallback_recycle: float,
) -> str | None:
    """Why a connection placed as *placed* must be replaced now, or ``None``.

    * the source prefers another member than when it was opened: move;
    * it was opened on the other member by a fallback: retry the preferred
      one after *fallback_recycle* seconds (negative: never), unless the
      preferred one was rejected within that time (it would fail again).
    """
    if placed.user == preferred:
        return None
    if placed.preferred != preferred:
        return f"moving from {shown(placed.user)} to {shown(preferred)}"
    if (
        fallback_recycle >= 0
        and time.monotonic() - placed.opened >= fallback_recycle
        and not provider.recently_rejected(preferred, fallback_recycle)
    ):
        return f"retrying {shown(preferred)}"
    return None


class LoopPreference:
    """The preferred member, for code running on an event loop: never reads there.

    :meth:`preferred` answers from the provider's cache and, at most every
    :data:`LOOP_REFRESH_INTERVAL` seconds, starts a refresh in the default
    executor; the next call sees its result.
    """

    def __init__(self, provider: CredentialsProvider) -> None:
        self.provider = provider
        self._next = 0.0
        self._pending: asyncio.Future[object] | None = None

    def preferred(self, default: str) -> str:
        """The cached preferred member, or *default* before the first read."""
        now = time.monotonic()
        if now >= self._next and (self._pending is None or self._pending.done()):
            self._next = now + LOOP_REFRESH_INTERVAL
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(None, self._refresh)
        cached = self.provider.peek()
        return cached.preferred[0] if cached is not None else default

    def _refresh(self) -> object:
        try:
            return self.provider.current()
        except Exception:  # the provider logs it; the cached credentials stay
            return None

    async def fresh(self) -> str:
        """The preferred member after a refresh (in a worker thread)."""
        creds = await asyncio.to_thread(self.provider.current)
        return creds.preferred[0]
