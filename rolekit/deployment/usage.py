"""Who still uses a leaving member, seen from every place it can be used.

A :class:`Source` answers one question with one cheap query: which uses of
the members does it see right now?  The sessions of a server
(``pg_stat_activity`` of the primary or of a standby), the clients of a
PgBouncer (``SHOW CLIENTS``), or the logins the tracking trigger recorded.
A :class:`Watch` polls each source in its own thread, so a slow or distant
host never delays the others, and remembers when a member was last seen
anywhere: the drain waits until that is a quiet period ago.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from rolekit.deployment.poolers import IdleServer, Pooler
from rolekit.pg import catalog, tracking
from rolekit.pg.catalog import SessionInfo
from rolekit.pg.control import ControlConnection

#: seconds between two polls of a source: a connection that lives 20 ms is seen
POLL_INTERVAL = 0.01
#: seconds between two looks for idle pool connections to close
IDLE_CHECK_INTERVAL = 0.5
#: seconds between two reads of the tracked logins (exact: no need to hurry)
TRACKING_INTERVAL = 0.25
#: seconds the watch waits for every source's first answer
FIRST_LOOK_TIMEOUT = 60.0


class Use(NamedTuple):
    """One sign that a member is in use."""

    #: the host or pooler that shows it
    where: str
    #: ``session``, ``pooler client`` or ``login``
    kind: str
    user: str
    application_name: str
    #: the client's address; ``None`` when PostgreSQL hides it from us
    address: str | None
    pid: int | None = None
    #: seconds since it happened (tracked logins), 0 for what is live now
    age: float = 0.0


def session_uses(where: str, sessions: Iterable[SessionInfo]) -> list[Use]:
    return [
        Use(
            where,
            "session",
            s.user,
            s.application_name,
            (s.client_addr or "local") if s.details_visible else None,
            s.pid,
        )
        for s in sessions
    ]


def pooler_uses(pooler: Pooler, members: Sequence[str]) -> list[Use]:
    return [
        Use(pooler.name, "pooler client", c.user, c.application_name, c.addr)
        for c in pooler.clients(members)
    ]


def login_uses(where: str, logins: Iterable[tracking.TrackedLogin]) -> list[Use]:
    return [
        Use(where, "login", t.user, f"{t.logins} login(s)", t.client_addr, age=t.age)
        for t in logins
    ]


def describe_uses(uses: Sequence[Use]) -> str:
    """``1 session(s) on primary h:5432/db (my_app_tom: web@10.0.0.5 x1)``, per place and kind.

    An address PostgreSQL does not show us reads ``<hidden>``: the use
    counts all the same.
    """
    groups: dict[tuple[str, str], Counter[tuple[str, str, str]]] = {}
    for use in uses:
        counts = groups.setdefault((use.kind, use.where), Counter())
        counts[(use.user, use.application_name or "?", use.address or "<hidden>")] += 1
    parts = []
    for (kind, where), counts in sorted(groups.items()):
        total = sum(counts.values())
        inner = ", ".join(f"{u}: {app}@{addr} x{n}" for (u, app, addr), n in sorted(counts.items()))
        if kind == "login":
            age = min(u.age for u in uses if u.where == where and u.kind == kind)
            parts.append(
                f"{total} tracked login address(es) on {where}, the last {age:.0f}s ago ({inner})"
            )
        else:
            parts.append(f"{total} {kind}(s) on {where} ({inner})")
    return "; ".join(parts)


class Source(Protocol):
    """A place that shows uses of members (see the module docs)."""

    name: str
    interval: float

    def look(self, members: Sequence[str]) -> list[Use]: ...

    def close(self) -> None: ...


class HostSessions:
    """The backends of *members* on one server (a prepared :class:`~rolekit.pg.catalog.SessionPoll`)."""

    interval = POLL_INTERVAL

    def __init__(self, name: str, connection: ControlConnection) -> None:
        self.name = name
        self.connection = connection
        self._poll: catalog.SessionPoll | None = None

    def look(self, members: Sequence[str]) -> list[Use]:
        if self._poll is None:
            self._poll = catalog.SessionPoll(self.connection, members)
        return session_uses(self.name, self._poll())

    def close(self) -> None:
        if self._poll is not None:
            with contextlib.suppress(Exception):  # the connection may be gone: nothing to free
                self._poll.close()


class PoolerClients:
    """The clients of *members* on one PgBouncer; closes their idle server
    connections through *close_idle* (see :mod:`rolekit.deployment.poolers`)."""

    interval = POLL_INTERVAL

    def __init__(self, pooler: Pooler, close_idle: Callable[[list[IdleServer]], None]) -> None:
        self.name = pooler.name
        self.pooler = pooler
        self._close_idle = close_idle
        self._next_idle_check = 0.0

    def look(self, members: Sequence[str]) -> list[Use]:
        uses = pooler_uses(self.pooler, members)
        if not uses and time.monotonic() >= self._next_idle_check:
            self._next_idle_check = time.monotonic() + IDLE_CHECK_INTERVAL
            if idle := self.pooler.idle_servers(members):
                self._close_idle(idle)
        return uses

    def close(self) -> None:
        pass


class TrackedLogins:
    """Logins of *members* the tracking trigger recorded within the quiet period."""

    interval = TRACKING_INTERVAL

    def __init__(self, name: str, connection: ControlConnection, schema: str, within: float):
        self.name = name
        self.connection = connection
        self.schema = schema
        self.within = within

    def look(self, members: Sequence[str]) -> list[Use]:
        return login_uses(
            self.name, tracking.recent_logins(self.connection, self.schema, members, self.within)
        )

    def close(self) -> None:
        pass


class Sighting(NamedTuple):
    """What a :class:`Watch` knows at one moment."""

    #: ``time.monotonic()`` of the last use seen anywhere (the watch's start if none)
    last_seen: float
    #: what each source shows now
    current: tuple[Use, ...]
    #: the uses seen at :attr:`last_seen`
    last: tuple[Use, ...]
    #: the first source that failed, and why
    failure: tuple[str, BaseException] | None


class Watch:
    """Polls every source in a thread of its own; ``with Watch(...) as w: w.sighting()``."""

    def __init__(self, sources: Sequence[Source], members: Sequence[str]) -> None:
        self.sources = list(sources)
        self.members = list(members)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._last_seen = self._started
        self._current: dict[str, list[Use]] = {}
        self._last: list[Use] = []
        self._failure: tuple[str, BaseException] | None = None
        self._first_look = threading.Barrier(len(self.sources) + 1)
        self._threads = [
            threading.Thread(
                target=self._poll, args=(s,), name=f"rolekit-watch {s.name}", daemon=True
            )
            for s in self.sources
        ]

    def __enter__(self) -> Watch:
        self._started = self._last_seen = time.monotonic()
        for thread in self._threads:
            thread.start()
        try:  # every source looked once: the first decision knows every place
            self._first_look.wait(FIRST_LOOK_TIMEOUT)
        except threading.BrokenBarrierError:
            with self._lock:
                self._failure = self._failure or (
                    "a source",
                    TimeoutError(f"no answer within {FIRST_LOOK_TIMEOUT:.0f}s"),
                )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for source in self.sources:
            source.close()

    def _poll(self, source: Source) -> None:
        first = True
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                uses = source.look(self.members)
            except BaseException as exc:  # reported by the deciding thread
                with self._lock:
                    self._failure = self._failure or (source.name, exc)
                uses = None
            seen = time.monotonic()
            with self._lock:
                if uses is not None:
                    self._current[source.name] = uses
                if uses:
                    when = seen - min(u.age for u in uses)  # the most recent use
                    if when >= self._last_seen:
                        self._last_seen, self._last = when, list(uses)
            if first:
                first = False
                with contextlib.suppress(threading.BrokenBarrierError):
                    self._first_look.wait()
            if uses is None:
                return
            self._stop.wait(max(0.0, source.interval - (time.monotonic() - began)))

    @property
    def started(self) -> float:
        return self._started

    def sighting(self) -> Sighting:
        with self._lock:
            current = tuple(u for uses in self._current.values() for u in uses)
            return Sighting(self._last_seen, current, tuple(self._last), self._failure)
