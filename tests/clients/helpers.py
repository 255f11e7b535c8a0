"""Applications on every driver, and the rotation they must survive.

A :class:`Workload` runs queries nonstop in threads, an
:class:`AsyncWorkload` in tasks on an event loop of its own (in a thread, so
the test can drive rotations meanwhile).  Both record the member each query
ran as (``session_user``) and every failure.  :func:`two_rotations` takes
the family through two full rotations with real upgrades, the application
seeing the files before the database as a GitOps deploy would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from rolekit.testing import Cluster, Project

TOM, JERRY = "my_app_tom", "my_app_jerry"


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def session_users(cluster: Cluster) -> Counter[str]:
    """Backends of the family's roles on the server, per user (what the drain sees)."""
    conn = cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT usename FROM pg_stat_activity WHERE usename LIKE 'my_app%'")
            return Counter(user for (user,) in cur.fetchall())
    finally:
        conn.close()


def set_state(project: Project, login: list[str], incoming: str | None = None) -> None:
    """Edit rotation.json by hand as a GitOps user would (``Project.edit_state``)."""
    entry: dict[str, Any] = {"login": login}
    if incoming:
        entry["incoming"] = incoming
    project.edit_state("my_app", "dev", entry)


class _Counts:
    """Queries per member and failures, shared by the workloads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_user: Counter[str] = Counter()
        self.failures: list[str] = []
        self.retried = 0

    def ok(self, user: str) -> None:
        with self.lock:
            self.by_user[user] += 1

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.by_user)

    def total(self) -> int:
        return sum(self.counts().values())

    def only_as(self, user: str) -> Callable[[], bool]:
        return lambda: self.only(user)

    def only(self, user: str, seconds: float = 0.5) -> bool:
        """Whether every query of the next ``seconds`` ran as ``user``."""
        before = self.counts()
        time.sleep(seconds)
        new = self.counts() - before
        return bool(new) and set(new) == {user}


class Workload(_Counts):
    """``threads`` threads calling ``query()`` (returns the session user) nonstop.

    ``retry`` says whether a failed query may be retried once (a connection
    killed under it by ``terminate``); retries are counted apart and a query
    that fails again is a failure.
    """

    def __init__(
        self,
        query: Callable[[], str],
        threads: int,
        *,
        retry: Callable[[BaseException], bool] = lambda exc: False,
        close: Callable[[], object] = lambda: None,
    ) -> None:
        super().__init__()
        self.query, self.retry, self.close = query, retry, close
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"app-{i}", daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Workload:
        for thread in self._threads:
            thread.start()
        wait_for("the application to start", lambda: self.total() >= 100)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                try:
                    user = self.query()
                except Exception as exc:
                    if not self.retry(exc):
                        raise
                    with self.lock:
                        self.retried += 1
                    user = self.query()
            except Exception as exc:
                self.failed(exc)
            else:
                self.ok(user)
            time.sleep(0.005)


class AsyncWorkload(_Counts):
    """``tasks`` asyncio tasks awaiting ``query()`` nonstop, on a loop in a thread.

    ``setup`` (a coroutine function) runs first on that loop and returns the
    ``query`` coroutine function and a ``close`` coroutine function.
    """

    def __init__(
        self,
        setup: Callable[
            [], Awaitable[tuple[Callable[[], Awaitable[str]], Callable[[], Awaitable[Any]]]]
        ],
        tasks: int,
    ) -> None:
        super().__init__()
        self.setup, self.tasks = setup, tasks
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._main: Any = None

    async def _main_coro(self) -> None:
        query, close = await self.setup()
        self._stop = asyncio.Event()
        try:
            await asyncio.gather(*(self._run(query) for _ in range(self.tasks)))
        finally:
            await close()

    async def _run(self, query: Callable[[], Awaitable[str]]) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                user = await query()
            except Exception as exc:
                self.failed(exc)
            else:
                self.ok(user)
            await asyncio.sleep(0.005)

    def run(self, coro: Awaitable[Any], timeout: float = 120) -> Any:
        """Run *coro* on the workload's loop, from the test's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self) -> AsyncWorkload:
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._main_coro(), self.loop)
        wait_for("the application to start", lambda: self.total() >= 100)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._main.result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self.loop.close()


#: files :func:`two_rotations` changes: per rotation, the secrets file once and
#: rotation.json twice
FILE_CHANGES = 6


def two_rotations(project: Project, app: _Counts) -> list[str]:
    """tom -> jerry -> tom under load, each step an ``alembic upgrade``; returns the
    drain lines.  The application sees the files before the database applies them:
    its logins as the new member are refused until then, and it falls back."""
    drains: list[str] = []
    for old, new in [(TOM, JERRY), (JERRY, TOM)]:
        project.set_password(new, "dev")
        set_state(project, [old, new], incoming=new)
        project.upgrade("dev")
        wait_for(f"all queries on {new}", app.only_as(new))
        set_state(project, [new])
        proc = project.upgrade("dev", x={"drain_timeout": "30"})
        drains += [line for line in proc.stderr.splitlines() if line.startswith("drain:")]
        assert app.only(new)
    return drains
