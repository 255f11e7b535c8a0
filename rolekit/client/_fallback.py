"""Opening a connection as the preferred member, falling back on a rejected login.

Only a rejected login (SQLSTATE ``28P01``/``28000``, or the server's message
where the driver gives none) is worth trying the other member for; anything
else propagates unchanged.  This module knows psycopg2; importing it imports
the driver, which is why :mod:`rolekit.client` imports it only on first use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

import psycopg2

from rolekit.client._provider import CredentialsProvider
from rolekit.errors import BothMembersFailedError
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
)

_T = TypeVar("_T")


def auth_failure_reason(exc: BaseException) -> str | None:
    """Return why the server rejected a login, or ``None`` if ``exc`` is not that.

    Only a rejected login is worth trying the other member for; anything
    else (refused connection, timeout, unknown database) must propagate.
    psycopg2 gives no ``pgcode`` for errors raised while connecting, so the
    server's message is matched too.
    """
    if not isinstance(exc, psycopg2.OperationalError):
        return None
    code = getattr(exc, "pgcode", None)
    if code in _AUTH_SQLSTATES:
        return f"rejected, SQLSTATE {code}"
    text = str(exc)
    for pattern, reason in _AUTH_MESSAGES:
        if pattern.search(text):
            return reason
    return None


def open_with_fallback(
    provider: CredentialsProvider, open_: Callable[[str, Secret], _T]
) -> tuple[_T, str, str]:
    """Open a connection as the preferred member, falling back on a rejected login.

    Returns the connection, the user it logged in as, and the member the
    source preferred at that time.
    """
    creds, generation = provider.snapshot()
    user, secret = creds.preferred
    try:
        return open_(user, secret), user, user
    except psycopg2.OperationalError as exc:
        reason = auth_failure_reason(exc)
        if reason is None:
            raise
    provider.record_rejection(user)
    failures = [(user, reason)]
    # Single flight: if another thread re-read the source since our
    # snapshot, this returns its result without reading again.
    fresh = provider.after_rejection(generation, user)
    preferred = fresh.preferred[0]
    if provider.log_once(("rejected", user, reason)):
        logger.info("%s was rejected (%s); trying the other member", user, reason)
    else:
        logger.debug("%s was rejected (%s); trying the other member", user, reason)
    attempted = {(user, secret)}
    retried: set[str] = set()
    # The refreshed pairs first; then the old alternate in case the refresh lost it.
    for candidate, candidate_secret in (*fresh.pairs(), *creds.pairs()):
        if (candidate, candidate_secret) in attempted or candidate in retried:
            continue
        attempted.add((candidate, candidate_secret))
        retried.add(candidate)
        try:
            connection = open_(candidate, candidate_secret)
        except psycopg2.OperationalError as exc:
            reason = auth_failure_reason(exc)
            if reason is None:
                raise
            provider.record_rejection(candidate)
            failures.append((candidate, reason))
            logger.debug("%s was rejected too (%s)", candidate, reason)
            continue
        if candidate != preferred:
            provider.record_fallback()
            if provider.log_once(("fallback", candidate)):
                logger.info("fell back to %s (the source prefers %s)", candidate, preferred)
        return connection, candidate, preferred
    raise BothMembersFailedError(failures, provider.description) from None


def connect(provider: CredentialsProvider, dsn: str | None = None, **kwargs: Any) -> Any:
    """Open a psycopg2 connection as the preferred member, falling back on a rejected login.

    User and password are passed as ``user=``/``password=`` keyword
    arguments, which override any in ``dsn``; everything else (``host``,
    ``dbname``, ``connect_timeout``, ``application_name``...) is passed on
    unchanged.  An error other than a rejected login propagates as is, with
    no retry and no refresh.

    :raises BothMembersFailedError: every known member was rejected.
    :raises psycopg2.OperationalError: any other failure to connect.
    :raises TypeError: ``user`` or ``password`` is given (the provider
        supplies them).
    """
    for key in ("user", "password"):
        if key in kwargs:
            raise TypeError(f"connect() takes no {key!r}: the provider supplies it")

    def open_(user: str, password: Secret) -> Any:
        return psycopg2.connect(dsn, user=user, password=password.reveal(), **kwargs)

    return open_with_fallback(provider, open_)[0]
