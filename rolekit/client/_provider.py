"""The credentials provider: a thread-safe, single-flight cache of one source."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from rolekit.client._sources import FileSource, ProjectSource, env_source
from rolekit.errors import RolekitError
from rolekit.project.config import Settings
from rolekit.project.credentials import Credentials, shown

logger = logging.getLogger(__name__)

_MAX_LOGGED_ONCE: Final = 1024
_NO_STAMP: Final[Hashable] = object()


class _Count:
    """A counter of the provider, read under its lock (``refresh_count`` and the like)."""

    def __init__(self, attribute: str, doc: str) -> None:
        self.attribute, self.__doc__ = attribute, doc

    def __get__(self, provider: CredentialsProvider | None, owner: type | None = None) -> Any:
        if provider is None:
            return self
        with provider._lock:
            return int(getattr(provider, self.attribute))


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
    ) -> CredentialsProvider:
        """Read the rotation state and the secrets file of a rolekit project.

        The preferred member is the state's (the ``incoming`` one during an
        overlap, else the one that may log in); the alternate is the family's
        other member, with its password if the secrets file has one.  Both
        files are re-read when their ``(mtime_ns, size, inode)`` changes.

        The family's two members come from ``members``, else from the state
        file (its ``"members"``, which rolekit records, or the members its
        contexts name).  Without them only the preferred member is known and
        there is no fallback (a warning says so).  The project's migration
        files are never imported.

        The files are read once before returning, so a wrong path or a
        missing password fails at start-up.

        :raises RolekitError: a file is missing or invalid, the family has no
            state in ``context``, or no member may log in.
        """
        source = ProjectSource.open(family, context, Path(state_file), Path(secrets_file), members)
        provider = cls(source.fetch, stamp=source.stamp, description=source.description)
        provider.current()
        return provider

    @classmethod
    def from_alembic_ini(
        cls, ini_path: str | os.PathLike[str], family: str, context: str
    ) -> CredentialsProvider:
        """Like :meth:`from_project`, with the files named in ``alembic.ini``.

        Uses ``[rolekit] state`` and ``secrets``/``secrets.<context>``, so the
        application reads exactly what ``alembic upgrade`` applies.  The ini
        file is read with :mod:`configparser`: Alembic is not imported.
        """
        settings = Settings.load(ini_path)
        return cls.from_project(
            family,
            context,
            state_file=settings.state_file,
            secrets_file=settings.secrets_file(context),
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        family: str | None = None,
        context: str | None = None,
    ) -> CredentialsProvider:
        """Read a credentials document (``rolekit creds --format json``) from a file.

        For a file that something else keeps up to date: a Kubernetes Secret
        volume, Vault Agent, a CSI driver, a deploy step.  It is re-read when
        it changes, including through the symlink swap Secret volumes use
        (``..data``).  The document carries both members that may log in, so
        the application can fall back while its copy is ahead of or behind the
        database.  A partly written, empty or invalid file never replaces good
        credentials: the last good ones are kept and the problem is logged
        once per version of the file.

        Whatever publishes the file is not trusted to publish the right
        family: a document whose ``family`` or ``context`` is not *family*
        and *context* is refused the same way (the last good credentials are
        kept and a warning names the mismatch).  Without them, those of the
        first document read are kept to: pass them, so that a wrong document
        is refused at start-up too.

        The file is read once before returning, so a wrong path fails at
        start-up.

        :raises RolekitError: the file is missing or not a valid document,
            or it is one of another family or context.
        """
        source = FileSource(Path(path), family, context)
        provider = cls(source.fetch, stamp=source.stamp, description=source.description)
        provider.current()
        return provider

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
        provider = cls(env_source(prefix, environ), description=f"environment variables {prefix}_*")
        provider.current()
        return provider

    # -- reading ----------------------------------------------------------

    def current(self) -> Credentials:
        """The credentials to use now (cached; re-read if the source changed)."""
        return self.snapshot()[0]

    def peek(self) -> Credentials | None:
        """The cached credentials, without looking at the source (no I/O: safe on
        an event loop); ``None`` before the first read."""
        with self._lock:
            return self._creds

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

    generation = _Count(
        "_generation", "Incremented by every read of the source, successful or not."
    )
    refresh_count = _Count("_refreshes", "Reads of the source after the first successful one.")
    fallback_count = _Count(
        "_fallbacks", "Connections opened as a member other than the preferred one."
    )
    auth_failure_count = _Count("_auth_failures", "Logins the server rejected.")

    def _read(self, since: int, reason: str, *, strict: bool) -> tuple[Credentials, int]:
        """Fetch from the source unless another thread did since generation ``since``."""
        with self._fetch_lock:
            with self._lock:
                old = self._creds
                # another thread read since: its result stands, unless the source
                # changed again after it (its read may have failed on a half-written file)
                if old is not None and self._generation != since and self._unchanged_since_read():
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

    def _unchanged_since_read(self) -> bool:
        """Whether the source's stamp is the one of the last read (always, without a stamp)."""
        return self._stamp_fn is None or self._stamp_fn() == self._stamp

    def after_rejection(self, since: int, user: str) -> Credentials:
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
                logger.debug("%s was rejected; %s has not changed", shown(user), self.description)
                return creds
        return self._read(since, f"{shown(user)} was rejected", strict=False)[0]

    # -- bookkeeping for the connection helpers ---------------------------

    def record_rejection(self, user: str) -> None:
        with self._lock:
            self._auth_failures += 1
            self._rejected[user] = time.monotonic()

    def record_fallback(self) -> None:
        with self._lock:
            self._fallbacks += 1

    def recently_rejected(self, user: str, within: float) -> bool:
        with self._lock:
            when = self._rejected.get(user)
        return when is not None and time.monotonic() - when < within

    def log_once(self, key: Hashable) -> bool:
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
        logger.info("credentials from %s: preferred member %s", source, shown(new.preferred[0]))
        return
    if new == old:
        logger.debug("re-read credentials from %s (%s): unchanged", source, reason)
        return
    if new.preferred[0] != old.preferred[0]:
        logger.info(
            "re-read credentials from %s (%s): preferred member is now %s (was %s)",
            source,
            reason,
            shown(new.preferred[0]),
            shown(old.preferred[0]),
        )
    else:
        old_pairs = dict(old.pairs())
        changed = [user for user, secret in new.pairs() if old_pairs.get(user) != secret]
        logger.info(
            "re-read credentials from %s (%s): new password for %s",
            source,
            reason,
            ", ".join(map(shown, changed)) or "no member (the alternate member changed)",
        )
