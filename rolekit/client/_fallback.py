"""Opening a connection as the preferred member, falling back on a rejected login.

Only a rejected login (SQLSTATE ``28P01``/``28000``, or the server's message
where the driver gives none) is worth trying the other member for; anything
else propagates unchanged.  The rules are the same for every driver, so this
module imports none: each driver's module passes in how to open a connection.

:func:`open_with_fallback` is the synchronous loop (psycopg2, psycopg 3, and
SQLAlchemy's pool, including an async engine's, where *call* moves the
provider's reads off the event loop); :func:`open_with_fallback_async` is the
same loop for asyncio drivers.  Both drive one :class:`_Attempt`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, TypeVar

from rolekit.client._provider import CredentialsProvider
from rolekit.errors import BothMembersFailedError
from rolekit.project.credentials import Credentials, shown
from rolekit.secrets import Secret

logger = logging.getLogger(__name__)

#: SQLSTATEs of a rejected login: invalid_password, invalid_authorization_specification
_AUTH_SQLSTATES: Final = frozenset({"28P01", "28000"})
#: server messages of a rejected login, for drivers that give no SQLSTATE;
#: ``role ... does not exist`` needs the quoted name so that
#: ``database "x" does not exist`` is not taken for one
_AUTH_MESSAGES: Final = (
    (re.compile(r"password authentication failed for user"), "password rejected"),
    (re.compile(r'role "(?:[^"]|"")*" is not permitted to log in'), "not permitted to log in"),
    (re.compile(r'role "(?:[^"]|"")*" does not exist'), "role does not exist"),
    # SQLSTATE 28000 from pg_hba.conf: this member may not connect from here
    (
        re.compile(r"pg_hba\.conf rejects connection|no pg_hba\.conf entry for"),
        "refused by pg_hba.conf",
    ),
    # PgBouncer's word for a wrong password or a user not in its auth_file,
    # with SQLSTATE 08P01 (protocol_violation) rather than a 28xxx one
    (re.compile(r"SASL authentication failed"), "rejected by the pooler"),
)
#: the SQLSTATE PgBouncer sends with "SASL authentication failed"
_POOLER_SQLSTATE: Final = "08P01"

_T = TypeVar("_T")
#: how the loop calls the provider: directly, or through a worker thread
ProviderCall = Callable[..., Any]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and what it wraps (SQLAlchemy and the async adapters wrap the driver's error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def auth_failure_reason(exc: BaseException) -> str | None:
    """Return why the server rejected a login, or ``None`` if ``exc`` is not that.

    Works for psycopg2, psycopg 3 and asyncpg errors, wrapped or not, from
    PostgreSQL or through PgBouncer: the SQLSTATE where the driver gives one
    (``pgcode``, ``sqlstate``), else the server's message (psycopg2 and
    psycopg give no SQLSTATE for errors raised while connecting).  A refused
    connection, a timeout or an unknown database is not a rejected login and
    must propagate.
    """
    for error in _chain(exc):
        code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if code in _AUTH_SQLSTATES:
            return f"rejected, SQLSTATE {code}"
        # the message only counts from a connection error (every DB-API driver,
        # and SQLAlchemy, names that class OperationalError; asyncpg gives
        # PgBouncer's SQLSTATE), not from a query
        is_connect_error = any(c.__name__ == "OperationalError" for c in type(error).__mro__)
        if not (is_connect_error or code == _POOLER_SQLSTATE):
            continue
        text = str(error)
        for pattern, reason in _AUTH_MESSAGES:
            if pattern.search(text):
                return reason
    return None


def _direct(fn: Callable[..., _T], *args: Any) -> _T:
    return fn(*args)


class _Attempt:
    """The state of one login through the provider: who was tried, who failed."""

    def __init__(self, provider: CredentialsProvider, creds: Credentials, generation: int):
        self.provider = provider
        self.creds, self.generation = creds, generation
        self.preferred = creds.preferred[0]
        self.failures: list[tuple[str, str]] = []

    def rejected(self, user: str, exc: Exception) -> None:
        """Record a rejected login; re-raise anything else."""
        reason = auth_failure_reason(exc)
        if reason is None:
            raise exc
        self.provider.record_rejection(user)
        if not self.failures and self.provider.log_once(("rejected", user, reason)):
            logger.info("%s was rejected (%s); trying the other member", shown(user), reason)
        else:
            logger.debug("%s was rejected (%s)", shown(user), reason)
        self.failures.append((user, reason))

    def candidates(self, fresh: Credentials) -> Iterator[tuple[str, Secret]]:
        """The members to try after the first was rejected: the refreshed pairs
        first, then the old alternate in case the refresh lost it; each once."""
        self.preferred = fresh.preferred[0]
        attempted = {self.creds.preferred}
        retried: set[str] = set()
        for candidate, secret in (*fresh.pairs(), *self.creds.pairs()):
            if (candidate, secret) in attempted or candidate in retried:
                continue
            attempted.add((candidate, secret))
            retried.add(candidate)
            yield candidate, secret

    def succeeded(self, user: str) -> None:
        if user != self.preferred:
            self.provider.record_fallback()
            if self.provider.log_once(("fallback", user)):
                logger.info(
                    "fell back to %s (the source prefers %s)", shown(user), shown(self.preferred)
                )

    def give_up(self) -> BothMembersFailedError:
        return BothMembersFailedError(self.failures, self.provider.description)


def open_with_fallback(
    provider: CredentialsProvider,
    open_: Callable[[str, Secret], _T],
    *,
    call: ProviderCall = _direct,
) -> tuple[_T, str, str]:
    """Open a connection as the preferred member, falling back on a rejected login.

    Returns the connection, the user it logged in as, and the member the
    source preferred at that time.  *call* runs the provider's reads (pass
    one that moves them to a thread when on an event loop).
    """
    attempt = _Attempt(provider, *call(provider.snapshot))
    user, secret = attempt.creds.preferred
    try:
        return open_(user, secret), user, user
    except Exception as exc:
        attempt.rejected(user, exc)
    # Single flight: if another caller re-read the source since our snapshot,
    # this returns its result without reading again.
    fresh = call(provider.after_rejection, attempt.generation, user)
    for candidate, candidate_secret in attempt.candidates(fresh):
        try:
            connection = open_(candidate, candidate_secret)
        except Exception as exc:
            attempt.rejected(candidate, exc)
            continue
        attempt.succeeded(candidate)
        return connection, candidate, attempt.preferred
    raise attempt.give_up() from None


async def open_with_fallback_async(
    provider: CredentialsProvider, open_: Callable[[str, Secret], Awaitable[_T]]
) -> tuple[_T, str, str]:
    """:func:`open_with_fallback` for asyncio drivers.

    The provider's reads (files, a vault) run in a worker thread, never on
    the event loop; under a thundering herd they are still single-flight.
    """
    attempt = _Attempt(provider, *await asyncio.to_thread(provider.snapshot))
    user, secret = attempt.creds.preferred
    try:
        return await open_(user, secret), user, user
    except Exception as exc:
        attempt.rejected(user, exc)
    fresh = await asyncio.to_thread(provider.after_rejection, attempt.generation, user)
    for candidate, candidate_secret in attempt.candidates(fresh):
        try:
            connection = await open_(candidate, candidate_secret)
        except Exception as exc:
            attempt.rejected(candidate, exc)
            continue
        attempt.succeeded(candidate)
        return connection, candidate, attempt.preferred
    raise attempt.give_up() from None


def refuse_credentials(kwargs: dict[str, Any], what: str) -> None:
    """A caller's own ``user``/``password`` would be silently overridden: refuse them."""
    for key in ("user", "password"):
        if key in kwargs:
            raise TypeError(f"{what} takes no {key!r}: the provider supplies it")
