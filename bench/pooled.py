"""Pooled applications built on :mod:`rolekit.client`, one per stack.

One process, several threads (or asyncio tasks), one pool: SQLAlchemy's
``QueuePool`` on psycopg2, ``psycopg_pool``, an asyncpg pool, or SQLAlchemy's
async engine on asyncpg (:data:`STACKS`).  Its provider reads the same
credentials file the other apps use with
:meth:`~rolekit.client.CredentialsProvider.from_file` (so it follows the
rotation with the same lag); the pool then replaces connections of the old
member (at checkout, or asyncpg's at its next acquire).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.load import (
    CONNECT_FAILED,
    MP,
    OK,
    QUERY_FAILED,
    _first_line,
    _Workers,
    lower_priority,
    reap,
)
from rolekit.testing import Cluster

#: the application stacks a pooled app can be built on, and how
STACKS: dict[str, str] = {
    "sqlalchemy-psycopg2": "rolekit.client.create_engine, QueuePool on psycopg2, threads",
    "sqlalchemy-psycopg": "rolekit.client.create_engine, QueuePool on psycopg 3, threads",
    "psycopg-pool": "rolekit.client.psycopg.connection_pool (psycopg_pool), threads",
    "psycopg-async-pool": "rolekit.client.psycopg.async_connection_pool, asyncio tasks",
    "asyncpg-pool": "rolekit.client.asyncpg.create_pool, asyncio tasks",
    "sqlalchemy-asyncpg": "rolekit.client.create_async_engine on asyncpg, asyncio tasks",
    "sqlalchemy-psycopg-async": "rolekit.client.create_async_engine on psycopg 3, asyncio tasks",
}
#: the stacks that run on an event loop
ASYNC_STACKS = (
    "psycopg-async-pool",
    "asyncpg-pool",
    "sqlalchemy-asyncpg",
    "sqlalchemy-psycopg-async",
)

Outcome = tuple[int, str, str | None]
Record = tuple[float, float, int, str]


SyncStack = tuple[Callable[[], Outcome], Callable[[], object], Counter[str]]
AsyncStack = tuple[Callable[[], Awaitable[Outcome]], Callable[[], Awaitable[object]], Counter[str]]


def _psycopg_pool(host: str, port: int, provider: Any, size: int) -> SyncStack:
    from rolekit.client import psycopg as rk_psycopg

    physical: Counter[str] = Counter()
    lock = threading.Lock()

    def configure(conn: Any) -> None:
        with lock:
            physical[conn.info.user] += 1

    pool = rk_psycopg.connection_pool(
        provider,
        f"host={host} port={port} dbname=postgres connect_timeout=10 application_name=bench-pooled",
        min_size=size,
        max_size=size,
        timeout=30,
        open=True,
        configure=configure,
    )

    def query() -> Outcome:
        try:
            with pool.connection() as conn:
                row = conn.execute("SELECT session_user").fetchone()
                return OK, str(row[0] if row else "?"), None
        except Exception as exc:
            return QUERY_FAILED, "?", f"checkout+query: {_first_line(exc)}"

    return query, pool.close, physical


def _sync_engine(host: str, port: int, provider: Any, size: int, driver: str) -> SyncStack:
    from sqlalchemy import event

    from rolekit.client import create_engine

    physical: Counter[str] = Counter()
    lock = threading.Lock()
    engine = create_engine(
        f"postgresql+{driver}://{host}:{port}/postgres",
        provider,
        pool_size=size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"application_name": "bench-pooled", "connect_timeout": 10},
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        with lock:
            physical[dbapi_connection.info.user] += 1

    def query() -> Outcome:
        try:
            conn = engine.connect()
        except Exception as exc:
            return CONNECT_FAILED, "?", f"checkout: {_first_line(exc)}"
        try:
            return OK, str(conn.exec_driver_sql("SELECT session_user").scalar()), None
        except Exception as exc:
            return QUERY_FAILED, "?", f"query: {_first_line(exc)}"
        finally:
            conn.close()

    return query, engine.dispose, physical


def _sync_stack(stack: str, host: str, port: int, provider: Any, size: int) -> SyncStack:
    """One checkout and query of a threaded stack, its close, and its physical logins."""
    if stack == "psycopg-pool":
        return _psycopg_pool(host, port, provider, size)
    driver = "psycopg" if stack == "sqlalchemy-psycopg" else "psycopg2"
    return _sync_engine(host, port, provider, size, driver)


async def _asyncpg_pool(host: str, port: int, provider: Any, size: int) -> AsyncStack:
    from rolekit.client import asyncpg as rk_asyncpg

    physical: Counter[str] = Counter()

    async def init(conn: Any) -> None:
        physical[str(await conn.fetchval("SELECT session_user"))] += 1

    pool = await rk_asyncpg.create_pool(
        provider,
        host=host,
        port=port,
        database="postgres",
        min_size=size,
        max_size=size,
        timeout=10,
        init=init,
        server_settings={"application_name": "bench-pooled"},
    )

    async def query() -> Outcome:
        try:
            async with pool.acquire(timeout=30) as conn:
                return OK, str(await conn.fetchval("SELECT session_user")), None
        except Exception as exc:
            return QUERY_FAILED, "?", f"acquire+query: {_first_line(exc)}"

    return query, pool.close, physical


async def _psycopg_async_pool(host: str, port: int, provider: Any, size: int) -> AsyncStack:
    from rolekit.client import psycopg as rk_psycopg

    physical: Counter[str] = Counter()

    async def configure(conn: Any) -> None:
        physical[conn.info.user] += 1

    pool = rk_psycopg.async_connection_pool(
        provider,
        f"host={host} port={port} dbname=postgres connect_timeout=10 application_name=bench-pooled",
        min_size=size,
        max_size=size,
        timeout=30,
        open=False,
        configure=configure,
    )
    await pool.open(wait=True)

    async def query() -> Outcome:
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT session_user")).fetchone()
                return OK, str(row[0] if row else "?"), None
        except Exception as exc:
            return QUERY_FAILED, "?", f"checkout+query: {_first_line(exc)}"

    return query, pool.close, physical


async def _async_engine(host: str, port: int, provider: Any, size: int, driver: str) -> AsyncStack:
    from sqlalchemy import event, text

    from rolekit.client import create_async_engine

    physical: Counter[str] = Counter()
    connect_args: dict[str, Any] = (
        {"server_settings": {"application_name": "bench-pooled"}, "timeout": 10}
        if driver == "asyncpg"
        else {"application_name": "bench-pooled", "connect_timeout": 10}
    )
    engine = create_async_engine(
        f"postgresql+{driver}://{host}:{port}/postgres",
        provider,
        pool_size=size,
        max_overflow=0,
        pool_timeout=30,
        connect_args=connect_args,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # in SQLAlchemy's greenlet: the adapted cursor may run a query here
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT session_user")
        physical[str(cursor.fetchone()[0])] += 1
        cursor.close()

    async def query() -> Outcome:
        try:
            async with engine.connect() as conn:
                return OK, str((await conn.execute(text("SELECT session_user"))).scalar()), None
        except Exception as exc:
            return QUERY_FAILED, "?", f"checkout+query: {_first_line(exc)}"

    return query, engine.dispose, physical


async def _async_stack(stack: str, host: str, port: int, provider: Any, size: int) -> AsyncStack:
    """:func:`_sync_stack` for the asyncio stacks."""
    if stack == "asyncpg-pool":
        return await _asyncpg_pool(host, port, provider, size)
    if stack == "psycopg-async-pool":
        return await _psycopg_async_pool(host, port, provider, size)
    driver = "asyncpg" if stack == "sqlalchemy-asyncpg" else "psycopg"
    return await _async_engine(host, port, provider, size, driver)


class _Recorder:
    """Each query's (start, ms, status, user) and the errors, from threads or tasks."""

    def __init__(self, count: Any) -> None:
        self.records: list[Record] = []
        self.errors: Counter[str] = Counter()
        self.count = count
        self.lock = threading.Lock()

    def note(self, started: float, t0: float, outcome: Outcome) -> None:
        status, user, error = outcome
        with self.lock:
            self.records.append((started, (time.perf_counter() - t0) * 1000, status, user))
            if error:
                self.errors[error] += 1
        with self.count.get_lock():
            self.count.value += 1


def _run_async(
    stack: str, host: str, port: int, provider: Any, pool_size: int, tasks: int,
    think_s: float, stop: Any, recorder: _Recorder,
) -> Counter[str]:  # fmt: skip
    async def main() -> Counter[str]:
        query, close, physical = await _async_stack(stack, host, port, provider, pool_size)

        async def task() -> None:
            while not stop.is_set():
                started, t0 = time.time(), time.perf_counter()
                recorder.note(started, t0, await query())
                await asyncio.sleep(think_s)

        await asyncio.gather(*(task() for _ in range(tasks)))
        await close()
        return physical

    return asyncio.run(main())


def _run_threads(
    stack: str, host: str, port: int, provider: Any, pool_size: int, threads: int,
    think_s: float, stop: Any, recorder: _Recorder,
) -> Counter[str]:  # fmt: skip
    query, close, physical = _sync_stack(stack, host, port, provider, pool_size)

    def loop() -> None:
        while not stop.is_set():
            started, t0 = time.time(), time.perf_counter()
            recorder.note(started, t0, query())
            time.sleep(think_s)

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    close()
    return physical


def _app_main(
    stack: str,
    host: str,
    port: int,
    creds_path: str,
    out_path: str,
    threads: int,
    pool_size: int,
    think_s: float,
    ready: Any,
    go: Any,
    stop: Any,
    count: Any,
) -> None:
    lower_priority()
    from rolekit.client import CredentialsProvider

    # the app reads the same credentials file as the other apps, as a mounted
    # file: re-read when it changes
    provider = CredentialsProvider.from_file(creds_path)
    recorder = _Recorder(count)
    with ready.get_lock():
        ready.value += 1
    go.wait()
    run = _run_async if stack in ASYNC_STACKS else _run_threads
    physical = run(stack, host, port, provider, pool_size, threads, think_s, stop, recorder)
    Path(out_path).write_text(
        json.dumps(
            {
                "records": recorder.records,
                "errors": dict(recorder.errors),
                "physical_connects": dict(physical),
                "provider": {
                    "refreshes": provider.refresh_count,
                    "fallbacks": provider.fallback_count,
                    "auth_failures": provider.auth_failure_count,
                },
            }
        )
    )


class PooledApp(_Workers):
    """Same interface as :class:`bench.load.WorkerPool`, one process with threads."""

    def __init__(
        self,
        name: str,
        cluster: Cluster,
        creds_path: Path,
        out_dir: Path,
        *,
        stack: str = "sqlalchemy-psycopg2",
        threads: int = 4,
        pool_size: int = 4,
        think_s: float = 0.005,
    ) -> None:
        if stack not in STACKS:
            raise ValueError(f"unknown stack {stack!r}; choose one of {', '.join(STACKS)}")
        self.name, self.stack = name, stack
        self.host, self.port = cluster.host, cluster.port
        self.creds_path = creds_path
        self.out_path = out_dir / f"{name}.json"
        self.threads = threads
        self.pool_size = pool_size
        self.think_s = think_s
        super().__init__(1)
        self.proc: Any = None
        self.physical_connects: dict[str, int] = {}
        self.provider_stats: dict[str, int] = {}

    def start(self, go: Any) -> None:
        self.proc = MP.Process(
            target=_app_main,
            args=(
                self.stack,
                self.host,
                self.port,
                str(self.creds_path),
                str(self.out_path),
                self.threads,
                self.pool_size,
                self.think_s,
                self.ready,
                go,
                self.stop_event,
                self.count,
            ),
            daemon=True,
        )
        self.proc.start()

    def join(self) -> tuple[list[tuple[float, float, int, str]], Counter[str]]:
        reap(self.proc)
        if not self.out_path.exists():
            return [], Counter({"pooled app died without results": 1})
        data = json.loads(self.out_path.read_text())
        self.physical_connects = data["physical_connects"]
        self.provider_stats = data["provider"]
        records = sorted((r[0], r[1], r[2], r[3]) for r in data["records"])
        return records, Counter(data["errors"])
