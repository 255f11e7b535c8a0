"""Let applications follow a password rotation without a redeploy.

During a rotation both members of a family (``my_app_tom``, ``my_app_jerry``)
may log in for a while, then the old one is set ``NOLOGIN``.  An application
that read one user and password at start-up would have to be redeployed at
the right moment; this module instead keeps *both* members' credentials and
which one is preferred, and

* opens every new connection as the **preferred** member;
* on an **authentication failure** refreshes the credentials from their
  source (single-flight: however many threads fail at once, the source is
  read once) and tries the **other** member -- and the newly preferred one
  if the refresh changed it -- so a source that lags behind the database
  costs a failed login, not a failed request;
* never retries anything else: a refused connection or a timeout propagates
  unchanged, since trying the other member cannot help and would hide it.

The credentials come from a :class:`CredentialsProvider`: the project's own
files (``migrations/rotation.json`` and ``passwords.env``, re-read when they
change), environment variables, or any callable (a vault, a secret manager).

Connections are opened with :func:`connect` (psycopg2) or through a
SQLAlchemy engine from :func:`create_engine` / :func:`attach`.  User and
password always travel as separate keyword arguments, never inside a
connection string, so no password needs quoting or escaping.

It is the idea of gopqr (two alternating service accounts, a refresher on
credential failure) without its flaws: a network error is never mistaken for
a credential failure, the refresher cannot run many times at once, and
credentials are never built into a DSN.

**How long does a pooled connection stay on the old member?**  A
connection's login is fixed when it is opened, so pooled connections must be
replaced for the old member's sessions to end (which ``alembic upgrade``'s
drain guard waits for).  With an engine from :func:`create_engine`, a pooled
connection is replaced

1. at its next checkout after the source started preferring another member
   (so within the length of the transaction using it, under load);
2. if it was opened on the other member by a fallback (typically: the
   application saw the new ``rotation.json`` before ``alembic upgrade``
   applied it): at its first checkout ``fallback_recycle`` seconds (default
   10) after it was opened, unless the preferred member was rejected within
   that time (it would fail again);
3. at the first checkout ``pool_recycle`` seconds (default 300) after it was
   opened, whatever happens;
4. when ``pool_pre_ping`` finds it dead, e.g. ended by
   ``-x terminate=true``.

A connection sitting idle in the pool is only looked at when it is checked
out.  QueuePool hands connections out first-in first-out, so under any steady
load every pooled connection is checked out, hence moved, within moments;
an idle application keeps its old sessions until the drain timeout, where
``-x terminate=true`` ends them harmlessly (pre-ping replaces them at the
next checkout).  Choose the drain timeout larger than ``fallback_recycle``
plus the longest transaction plus the time between two uses of the pool.

An application whose source lags (it still prefers the old member after
``finish``) keeps its open connections on the old member -- ``NOLOGIN`` ends
no session -- so the drain cannot complete and needs ``-x terminate=true``;
afterwards its new connections fall back to the new member until the source
catches up.

Authentication failures are recognised by SQLSTATE ``28P01``/``28000`` when
the driver reports one, else by the server's English message (psycopg2 leaves
``pgcode`` empty for errors raised while connecting): servers with a
translated ``lc_messages`` need ``lc_messages = 'C'`` for the fallback to
work -- otherwise the error simply propagates, as any other.

Everything is logged to the ``rolekit.client`` logger, never a password.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import psycopg2
import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url

from rolekit.errors import RolekitError
from rolekit.rotation.state import RotationState
from rolekit.secrets import Secret, SecretsFile, secret_key

__all__ = [
    "DEFAULT_FALLBACK_RECYCLE",
    "DEFAULT_POOL_RECYCLE",
    "BothMembersFailedError",
    "Credentials",
    "CredentialsProvider",
    "attach",
    "auth_failure_reason",
    "connect",
    "create_engine",
]

logger = logging.getLogger("rolekit.client")

#: seconds after which :func:`create_engine`'s pool replaces any connection
DEFAULT_POOL_RECYCLE: Final = 300
#: seconds after which a connection opened by a fallback retries the preferred member
DEFAULT_FALLBACK_RECYCLE: Final = 10.0

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
_ENV_PREFIX_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: key of a pooled connection's placement in ``ConnectionPoolEntry.info``
_INFO_KEY: Final = "rolekit.client"
_MAX_LOGGED_ONCE: Final = 1024

_T = TypeVar("_T")
_NO_STAMP: Final[Hashable] = object()


# ---------------------------------------------------------------------------
# Errors


class BothMembersFailedError(RolekitError):
    """Every member the credential source knows was rejected, even after a refresh.

    The message names each user and why it was rejected (``password
    rejected``, ``not permitted to log in``...) -- never a password -- and
    where the credentials came from, since a stale source is the usual
    cause.  It is raised ``from None``: the drivers' messages add nothing the
    reasons do not say.

    :ivar users: the users that were tried, in order.
    :ivar failures: ``(user, reason)`` for each attempt.
    """

    def __init__(self, failures: Sequence[tuple[str, str]], source: str) -> None:
        self.failures = tuple(failures)
        self.source = source
        self.users = tuple(dict.fromkeys(user for user, _ in self.failures))
        tried = ", ".join(f"{user} ({reason})" for user, reason in self.failures)
        if len(self.users) > 1:
            what = f"could not log in as any member of the family: {tried}"
        else:
            what = f"could not log in: {tried}, and no other member is known to fall back to"
        super().__init__(
            f"{what}; checking {source} again gave nothing better: make sure it is up to "
            "date with the rotation (passwords are not shown)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are pickled as ``cls(*args)``; ours takes other arguments
        # (task queues and multiprocessing pickle exceptions).
        return (type(self), (self.failures, self.source))


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


# ---------------------------------------------------------------------------
# Credentials


def _check_pair(pair: object, what: str) -> tuple[str, Secret]:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(f"Credentials.{what} must be a (user, Secret) tuple")
    user, secret = pair
    if not isinstance(user, str) or not user or "\0" in user:
        raise ValueError(f"Credentials.{what}: the user must be a non-empty string")
    if not isinstance(secret, Secret):
        # Do not format ``secret``: it may be the password as a plain str.
        raise TypeError(
            f"Credentials.{what}: the password must be a rolekit.secrets.Secret, "
            f"not {type(secret).__name__} (use Credentials.of() to wrap plain strings)"
        )
    return user, secret


@dataclass(frozen=True)
class Credentials:
    """Both members' logins, as one immutable value.

    A fetch returns a whole new value, so a reader never sees the preferred
    user of one version with the password of another.  Passwords are
    :class:`~rolekit.secrets.Secret`, so printing or logging a
    ``Credentials`` shows ``<secret>``.

    :ivar preferred: ``(user, password)`` new connections use.
    :ivar alternate: ``(user, password)`` of the other member, tried when the
        preferred one is rejected; ``None`` when unknown.
    """

    preferred: tuple[str, Secret]
    alternate: tuple[str, Secret] | None = None

    def __post_init__(self) -> None:
        user = _check_pair(self.preferred, "preferred")[0]
        if self.alternate is not None and _check_pair(self.alternate, "alternate")[0] == user:
            raise ValueError(f"Credentials: the alternate user is the preferred one, {user!r}")

    @classmethod
    def of(
        cls,
        user: str,
        password: str | Secret,
        alternate_user: str | None = None,
        alternate_password: str | Secret | None = None,
    ) -> Credentials:
        """Build credentials from plain strings (e.g. a vault response).

        :raises ValueError: only one of ``alternate_user`` and
            ``alternate_password`` is given.
        """
        if (alternate_user is None) != (alternate_password is None):
            raise ValueError("give both alternate_user and alternate_password, or neither")

        def wrap(value: str | Secret) -> Secret:
            return value if isinstance(value, Secret) else Secret(value)

        alternate = None
        if alternate_user is not None and alternate_password is not None:
            alternate = (alternate_user, wrap(alternate_password))
        return cls((user, wrap(password)), alternate)

    @property
    def users(self) -> tuple[str, ...]:
        """The preferred user, then the alternate one if known."""
        return tuple(user for user, _ in self.pairs())

    def pairs(self) -> tuple[tuple[str, Secret], ...]:
        """``(user, password)`` in the order to try them."""
        if self.alternate is None:
            return (self.preferred,)
        return (self.preferred, self.alternate)


# ---------------------------------------------------------------------------
# Provider


class CredentialsProvider:
    """Thread-safe cache of :class:`Credentials` from one source.

    :meth:`current` serves the cached credentials; a source that can tell it
    changed (the project files: their ``(mtime_ns, size, inode)``) is checked
    on each call, which costs two ``stat`` calls, and re-read when it did.
    :meth:`refresh` re-reads on demand.  Every read is **single-flight**: a
    lock serialises reads and a generation counter lets a thread that waited
    while another one read return that result instead of reading again, so
    fifty threads hitting an authentication failure at once cause one read.

    If a re-read fails (a half-written file, an unreachable vault) the
    previous credentials are kept and a warning is logged: a broken source
    must not take down an application whose credentials still work.  Only
    the first read, and an explicit :meth:`refresh`, raise.

    :param fetch: returns the current credentials; called on first use,
        when ``stamp`` changes, after an authentication failure (only if
        ``stamp`` changed, when there is one) and on :meth:`refresh`.  It
        need not be thread-safe.
    :param stamp: optional, cheap; returns a value that changes when the
        source changed (files: their ``stat``).  Without it the source is
        re-read only after an authentication failure or on demand.
    :param description: names the source in logs and errors; must not hold
        a secret.
    """

    def __init__(
        self,
        fetch: Callable[[], Credentials],
        *,
        stamp: Callable[[], Hashable] | None = None,
        description: str | None = None,
    ) -> None:
        self._fetch = fetch
        self._stamp_fn = stamp
        self.description = description or f"{getattr(fetch, '__qualname__', 'a callable')}()"
        self._lock = threading.Lock()  # guards the fields below
        self._fetch_lock = threading.Lock()  # serialises fetches (single flight)
        self._creds: Credentials | None = None
        self._stamp: Hashable = _NO_STAMP
        self._generation = 0
        self._refreshes = 0
        self._fallbacks = 0
        self._auth_failures = 0
        self._rejected: dict[str, float] = {}
        self._logged: set[Hashable] = set()

    def __repr__(self) -> str:
        return f"<CredentialsProvider {self.description}>"

    # -- sources ----------------------------------------------------------

    @classmethod
    def from_project(
        cls,
        family: str,
        context: str,
        *,
        state_file: str | os.PathLike[str],
        secrets_file: str | os.PathLike[str],
        members: Sequence[str] | None = None,
        repeatables_dir: str | os.PathLike[str] | None = None,
    ) -> CredentialsProvider:
        """Read the rotation state and the secrets file of a rolekit project.

        The preferred member is the state's (the ``incoming`` one during an
        overlap, else the one that may log in); the alternate is the family's
        other member, with its password if the secrets file has one.  Both
        files are re-read when their ``(mtime_ns, size, inode)`` changes.

        The family's two members come from ``members``, else from the
        ``FamilyLogin`` repeatable in ``repeatables_dir`` (default: the
        ``repeatable`` folder beside the state file, rolekit's layout; its
        Python files are imported), else from the members the state file
        names in any context.  Without them only the preferred member is
        known and there is no fallback (a warning says so).

        The files are read once before returning, so a wrong path or a
        missing password fails at start-up.

        :raises RolekitError: a file is missing or invalid, the family has no
            state in ``context``, or no member may log in.
        """
        state_path = Path(state_file)
        if repeatables_dir is None and members is None:
            default = state_path.parent / "repeatable"
            repeatables_dir = default if default.is_dir() else None
        known = _family_members(
            family, members, Path(repeatables_dir) if repeatables_dir else None, state_path
        )
        if known is None:
            logger.warning(
                "family %s: its two members are unknown (pass members=...), so there is no "
                "other member to fall back to",
                family,
            )
        source = _ProjectSource(family, context, state_path, Path(secrets_file), known)
        provider = cls(
            source.fetch,
            stamp=source.stamp,
            description=f"{state_path} and {source.secrets.path} ({family}, context {context})",
        )
        provider.current()
        return provider

    @classmethod
    def from_alembic_ini(
        cls,
        ini_path: str | os.PathLike[str],
        family: str,
        context: str,
    ) -> CredentialsProvider:
        """Like :meth:`from_project`, with the files named in ``alembic.ini``.

        Uses ``[rolekit] state``, ``secrets``/``secrets.<context>`` and
        ``repeatables``, so the application reads exactly what
        ``alembic upgrade`` applies.
        """
        from rolekit.runtime.config import Settings

        settings = Settings.load(ini_path)
        return cls.from_project(
            family,
            context,
            state_file=settings.state_file,
            secrets_file=settings.secrets_file(context),
            repeatables_dir=settings.repeatables_dir,
        )

    @classmethod
    def from_env(
        cls, prefix: str, *, environ: Mapping[str, str] | None = None
    ) -> CredentialsProvider:
        """Read ``<PREFIX>_USER``/``_PASSWORD`` and optional ``_ALT_USER``/``_ALT_PASSWORD``.

        The first pair is preferred.  The variables are read again after an
        authentication failure or on :meth:`refresh`, so a process that
        updates ``os.environ`` (or passes a mapping it updates) is followed.

        :raises RolekitError: a variable is missing or empty, or only one of
            the ``_ALT_`` pair is set.  Messages name variables, not values.
        """
        if not _ENV_PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"environment prefix {prefix!r} is not a valid variable name prefix")
        env = os.environ if environ is None else environ
        names = [
            f"{prefix}_{suffix}" for suffix in ("USER", "PASSWORD", "ALT_USER", "ALT_PASSWORD")
        ]

        def fetch() -> Credentials:
            user, password, alt_user, alt_password = (env.get(name) or None for name in names)
            for name, value in zip(names[:2], (user, password), strict=True):
                if value is None:
                    raise RolekitError(f"environment variable {name} is not set or empty")
            if (alt_user is None) != (alt_password is None):
                raise RolekitError(f"set both {names[2]} and {names[3]}, or neither")
            assert user is not None and password is not None
            return Credentials.of(user, password, alt_user, alt_password)

        provider = cls(fetch, description=f"environment variables {prefix}_*")
        provider.current()
        return provider

    # -- reading ----------------------------------------------------------

    def current(self) -> Credentials:
        """The credentials to use now (cached; re-read if the source changed)."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[Credentials, int]:
        """The current credentials and their generation.

        Pass the generation to :meth:`refresh` as ``since`` after those
        credentials failed, so that a thread whose failure was already
        answered by another thread's refresh does not read again.
        """
        with self._lock:
            creds, generation, seen = self._creds, self._generation, self._stamp
        if creds is None:
            return self._read(generation, "first use", strict=True)
        if self._stamp_fn is not None and self._stamp_fn() != seen:
            return self._read(generation, "the source changed", strict=False)
        return creds, generation

    def refresh(self, *, since: int | None = None) -> Credentials:
        """Re-read the source now, unless another thread did since ``since``.

        ``since`` defaults to the generation at the time of the call: callers
        that arrive while a read is running get its result.

        :raises Exception: whatever the source raises; the previous
            credentials stay cached.
        """
        if since is None:
            with self._lock:
                since = self._generation
        return self._read(since, "requested", strict=True)[0]

    @property
    def generation(self) -> int:
        """Incremented by every read of the source, successful or not."""
        with self._lock:
            return self._generation

    @property
    def refresh_count(self) -> int:
        """Reads of the source after the first successful one."""
        with self._lock:
            return self._refreshes

    @property
    def fallback_count(self) -> int:
        """Connections opened as a member other than the preferred one."""
        with self._lock:
            return self._fallbacks

    @property
    def auth_failure_count(self) -> int:
        """Logins the server rejected."""
        with self._lock:
            return self._auth_failures

    def _read(self, since: int, reason: str, *, strict: bool) -> tuple[Credentials, int]:
        """Fetch from the source unless another thread did since generation ``since``."""
        with self._fetch_lock:
            with self._lock:
                old = self._creds
                if old is not None and self._generation != since:
                    return old, self._generation
            stamp = self._stamp_fn() if self._stamp_fn is not None else _NO_STAMP
            try:
                new = self._fetch()
                if not isinstance(new, Credentials):
                    raise TypeError(
                        f"the credential source returned {type(new).__name__}, not Credentials"
                    )
            except Exception as exc:
                if old is None:
                    raise
                with self._lock:
                    self._refreshes += 1
                    self._generation += 1
                    # An unchanged broken source is not re-read on every call.
                    self._stamp = stamp
                    generation = self._generation
                if strict:
                    raise
                logger.warning(
                    "could not re-read credentials from %s (%s); keeping the previous ones",
                    self.description,
                    _describe_error(exc),
                )
                return old, generation
            with self._lock:
                if old is not None:
                    self._refreshes += 1
                self._creds, self._stamp = new, stamp
                self._generation += 1
                generation = self._generation
                if new != old:
                    self._rejected.clear()
                    self._logged.clear()
        _log_change(old, new, reason, self.description)
        return new, generation

    def _after_rejection(self, since: int, user: str) -> Credentials:
        """Re-read after ``user`` was rejected with the credentials of generation ``since``.

        Single flight, like every read.  A source with a stamp is only
        re-read if the stamp changed: the same files hold the same
        credentials, and re-reading them on every rejected login (a ``git``
        check included) would only slow the fallback down.
        """
        if self._stamp_fn is not None:
            with self._lock:
                creds, generation, seen = self._creds, self._generation, self._stamp
            if creds is not None and generation == since and self._stamp_fn() == seen:
                logger.debug("%s was rejected; %s has not changed", user, self.description)
                return creds
        return self._read(since, f"{user} was rejected", strict=False)[0]

    # -- bookkeeping for the connection helpers ---------------------------

    def _note_rejected(self, user: str) -> None:
        with self._lock:
            self._auth_failures += 1
            self._rejected[user] = time.monotonic()

    def _note_fallback(self) -> None:
        with self._lock:
            self._fallbacks += 1

    def _recently_rejected(self, user: str, within: float) -> bool:
        with self._lock:
            when = self._rejected.get(user)
        return when is not None and time.monotonic() - when < within

    def _first_time(self, key: Hashable) -> bool:
        """Whether ``key`` is logged for the first time with these credentials."""
        with self._lock:
            if key in self._logged:
                return False
            if len(self._logged) >= _MAX_LOGGED_ONCE:
                self._logged.clear()
            self._logged.add(key)
            return True


def _describe_error(exc: BaseException) -> str:
    """Describe a source error without risking a secret in the log.

    rolekit's own errors never carry a secret; other libraries' messages
    might (a token in a URL), so only their type is shown.
    """
    if isinstance(exc, RolekitError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}; message not logged"


def _log_change(old: Credentials | None, new: Credentials, reason: str, source: str) -> None:
    if old is None:
        logger.info("credentials from %s: preferred member %s", source, new.preferred[0])
        return
    if new == old:
        logger.debug("re-read credentials from %s (%s): unchanged", source, reason)
        return
    if new.preferred[0] != old.preferred[0]:
        logger.info(
            "re-read credentials from %s (%s): preferred member is now %s (was %s)",
            source,
            reason,
            new.preferred[0],
            old.preferred[0],
        )
    else:
        old_pairs = dict(old.pairs())
        changed = [user for user, secret in new.pairs() if old_pairs.get(user) != secret]
        logger.info(
            "re-read credentials from %s (%s): new password for %s",
            source,
            reason,
            ", ".join(changed) or "no member (the alternate member changed)",
        )


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """``(mtime_ns, size, inode)``, as :class:`SecretsFile` caches on."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _family_members(
    family: str, members: Sequence[str] | None, repeatables_dir: Path | None, state_file: Path
) -> tuple[str, str] | None:
    """The family's two members: given, declared by a repeatable, or named in the state."""
    if members is not None:
        found = tuple(members)
        if isinstance(members, str) or len(found) != 2 or found[0] == found[1]:
            raise ValueError(f"family {family!r}: members must be two distinct role names")
        return (found[0], found[1])
    if repeatables_dir is not None:
        from rolekit.repeatable.loader import load_repeatables, login_members

        declared = login_members(load_repeatables(repeatables_dir)).get(family)
        if declared is not None:
            return declared.family.members
    named: list[str] = []
    for state in RotationState.load(state_file).families.get(family, {}).values():
        named += [member for member in state.login if member not in named]
    return (named[0], named[1]) if len(named) == 2 else None


class _ProjectSource:
    """The rotation state plus the secrets file, read together."""

    def __init__(
        self,
        family: str,
        context: str,
        state_file: Path,
        secrets_file: Path,
        members: tuple[str, str] | None,
    ) -> None:
        self.family = family
        self.context = context.lower()
        self.state_file = state_file
        self.secrets = SecretsFile(secrets_file)
        self.members = members

    def stamp(self) -> Hashable:
        return (_file_stamp(self.state_file), _file_stamp(self.secrets.path))

    def fetch(self) -> Credentials:
        state = RotationState.load(self.state_file).get(self.family, self.context)
        if state is None:
            raise RolekitError(
                f"{self.state_file} has no state for family {self.family!r} in context "
                f"{self.context!r}"
            )
        preferred = state.preferred
        if preferred is None:
            raise RolekitError(
                f"{self.state_file}: no member of {self.family!r} may log in in context "
                f"{self.context!r}"
            )
        if self.members is not None and preferred not in self.members:
            raise RolekitError(
                f"{self.state_file}: {preferred!r} is not a member of {self.family!r} "
                f"({', '.join(self.members)})"
            )
        if self.members is not None:
            alternate: str | None = next(m for m in self.members if m != preferred)
        else:
            alternate = next((m for m in state.login if m != preferred), None)
        # One load, so both passwords come from the same version of the file.
        values = self.secrets.load()
        password = values.get(secret_key(preferred, self.context))
        if password is None:
            password = self.secrets.get(preferred, self.context)  # raises, with a clear message
        other = None
        if alternate is not None:
            alt_password = values.get(secret_key(alternate, self.context))
            if alt_password is not None:
                other = (alternate, alt_password)
        return Credentials((preferred, password), other)


# ---------------------------------------------------------------------------
# Connecting


def _open_with_fallback(
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
    provider._note_rejected(user)
    failures = [(user, reason)]
    # Single flight: if another thread re-read the source since our
    # snapshot, this returns its result without reading again.
    fresh = provider._after_rejection(generation, user)
    preferred = fresh.preferred[0]
    if provider._first_time(("rejected", user, reason)):
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
            provider._note_rejected(candidate)
            failures.append((candidate, reason))
            logger.debug("%s was rejected too (%s)", candidate, reason)
            continue
        if candidate != preferred:
            provider._note_fallback()
            if provider._first_time(("fallback", candidate)):
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

    return _open_with_fallback(provider, open_)[0]


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
        params = {k: v for k, v in cparams.items() if k not in ("user", "password")}

        def open_(user: str, password: Secret) -> Any:
            return dialect.connect(*cargs, **params, user=user, password=password.reveal())

        connection, user, preferred = _open_with_fallback(provider, open_)
        if record is not None:
            record.info[_INFO_KEY] = _Placement(user, preferred, time.monotonic())
        return connection

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
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
            and not provider._recently_rejected(preferred, fallback_recycle)
        ):
            logger.debug(
                "replacing a fallback connection of %s: retrying %s", placed.user, preferred
            )
            raise sa_exc.DisconnectionError(f"rolekit: retrying {preferred}")

    event.listen(engine, "do_connect", do_connect)
    event.listen(engine, "checkout", checkout)


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
