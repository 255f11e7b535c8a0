"""What ``rolekit.client`` costs an application per query, against the same pool without it.

For each stack (SQLAlchemy on psycopg2, psycopg_pool, an asyncpg pool,
SQLAlchemy's async engine on asyncpg) one pool is built through rolekit and
one plainly, with the user and password given directly and the same pool
settings rolekit applies (SQLAlchemy's pre-ping, the 300 s lifetime), so the
difference is rolekit's own: the provider's stat of its source at checkout,
the placement check, asyncpg's watcher.  Rounds alternate between the two;
the result is the ratio of their median checkout+query latencies.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median
from typing import Any

from bench.common import log, machine, rounded, write_json
from bench.load import write_creds
from rolekit.client import CredentialsProvider
from rolekit.testing import Cluster

USER = "bench_client"
STACKS = ("sqlalchemy-psycopg2", "psycopg-pool", "asyncpg-pool", "sqlalchemy-asyncpg")
#: threads or tasks sharing each pool (its size), and untimed queries of each first
WORKERS = 4
WARM_UP = 50


def _plain_url(cluster: Cluster, driver: str, password: str) -> str:
    return f"postgresql+{driver}://{USER}:{password}@{cluster.host}:{cluster.port}/postgres"


def _threaded(
    stack: str, cluster: Cluster, password: str, provider: CredentialsProvider | None
) -> tuple[Callable[[], object], Callable[[], object]]:
    if stack == "psycopg-pool":
        import psycopg_pool

        from rolekit.client import psycopg as rk_psycopg

        conninfo = f"host={cluster.host} port={cluster.port} dbname=postgres"
        if provider is not None:
            pool = rk_psycopg.connection_pool(provider, conninfo, min_size=4, max_size=4)
        else:
            pool = psycopg_pool.ConnectionPool(
                f"{conninfo} user={USER} password={password}",
                min_size=4,
                max_size=4,
                max_lifetime=300,
            )
        pool.wait()

        def pool_query() -> object:
            with pool.connection() as conn:
                return conn.execute("SELECT session_user").fetchone()

        return pool_query, pool.close
    import sqlalchemy

    from rolekit.client import create_engine

    settings: dict[str, Any] = {"pool_size": 4, "max_overflow": 0}
    if provider is not None:
        url = f"postgresql+psycopg2://{cluster.host}:{cluster.port}/postgres"
        engine = create_engine(url, provider, **settings)
    else:
        engine = sqlalchemy.create_engine(
            _plain_url(cluster, "psycopg2", password),
            pool_pre_ping=True,
            pool_recycle=300,
            **settings,
        )

    def engine_query() -> object:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT session_user").scalar()

    return engine_query, engine.dispose


async def _asynchronous(
    stack: str, cluster: Cluster, password: str, provider: CredentialsProvider | None
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
    if stack == "asyncpg-pool":
        import asyncpg

        from rolekit.client import asyncpg as rk_asyncpg

        where = {"host": cluster.host, "port": cluster.port, "database": "postgres"}
        if provider is not None:
            pool = await rk_asyncpg.create_pool(provider, min_size=4, max_size=4, **where)
        else:
            pool = await asyncpg.create_pool(
                user=USER,
                password=password,
                min_size=4,
                max_size=4,
                max_inactive_connection_lifetime=300,
                **where,
            )

        async def pool_query() -> object:
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT session_user")

        return pool_query, pool.close
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    from rolekit.client import create_async_engine

    settings: dict[str, Any] = {"pool_size": 4, "max_overflow": 0}
    if provider is not None:
        url = f"postgresql+asyncpg://{cluster.host}:{cluster.port}/postgres"
        engine = create_async_engine(url, provider, **settings)
    else:
        engine = sa_create_async_engine(
            _plain_url(cluster, "asyncpg", password),
            pool_pre_ping=True,
            pool_recycle=300,
            **settings,
        )

    async def engine_query() -> object:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT session_user"))).scalar()

    return engine_query, engine.dispose


def _round_async(
    stack: str, cluster: Cluster, password: str, provider: CredentialsProvider | None, n: int
) -> list[float]:
    latencies: list[float] = []

    async def main() -> None:
        query, close = await _asynchronous(stack, cluster, password, provider)

        async def task(count: int, record: bool) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                await query()
                if record:
                    latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(task(WARM_UP, False) for _ in range(WORKERS)))
        await asyncio.gather(*(task(n // WORKERS, True) for _ in range(WORKERS)))
        await close()

    asyncio.run(main())
    return latencies


def _round_threads(
    stack: str, cluster: Cluster, password: str, provider: CredentialsProvider | None, n: int
) -> list[float]:
    latencies: list[float] = []
    query, close = _threaded(stack, cluster, password, provider)
    lock = threading.Lock()

    def worker(count: int, record: bool) -> None:
        mine = []
        for _ in range(count):
            t0 = time.perf_counter()
            query()
            mine.append((time.perf_counter() - t0) * 1000)
        if record:
            with lock:
                latencies.extend(mine)

    for count, record in ((WARM_UP, False), (n // WORKERS, True)):
        threads = [threading.Thread(target=worker, args=(count, record)) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    close()
    return latencies


def _round(
    stack: str, cluster: Cluster, password: str, provider: CredentialsProvider | None, n: int
) -> list[float]:
    """*n* checkout+query latencies (ms) by 4 threads or tasks, after a warm-up."""
    if stack in ("asyncpg-pool", "sqlalchemy-asyncpg"):
        return _round_async(stack, cluster, password, provider, n)
    return _round_threads(stack, cluster, password, provider, n)


def run(major: int | None = None, *, rounds: int = 4, queries: int = 2000) -> dict[str, Any]:
    """Measure each stack; write ``client_overhead.json``."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-client-"))
    with Cluster(major, log_statement="none") as cluster:
        info = machine(cluster)
        password = "bench-" + cluster.superuser_password
        cluster.query_one(f"CREATE ROLE {USER} LOGIN")
        cluster.set_password(USER, password)
        creds = work / "credentials.json"
        write_creds(creds, USER, password)
        provider = CredentialsProvider.from_file(creds)
        rows = []
        for stack in STACKS:
            medians: dict[str, list[float]] = {"rolekit": [], "plain": []}
            for i in range(rounds):
                order = [("rolekit", provider), ("plain", None)]
                for name, source in order if i % 2 == 0 else order[::-1]:
                    lat = _round(stack, cluster, password, source, queries)
                    medians[name].append(median(lat))
            rolekit_ms, plain_ms = median(medians["rolekit"]), median(medians["plain"])
            rows.append(
                {
                    "stack": stack,
                    "rolekit_p50_ms": rounded(rolekit_ms, 3),
                    "plain_p50_ms": rounded(plain_ms, 3),
                    "ratio": rounded(rolekit_ms / plain_ms, 3),
                    "round_medians_ms": {
                        k: [rounded(v, 3) for v in vs] for k, vs in medians.items()
                    },
                }
            )
            log(f"client overhead: {stack} rolekit {rolekit_ms:.3f} ms, plain {plain_ms:.3f} ms")
    shutil.rmtree(work, ignore_errors=True)
    data = {
        "machine": info,
        "rounds_each": rounds,
        "queries_per_round": queries,
        "stacks": rows,
        "method": (
            "median checkout+query latency of SELECT session_user by 4 threads or tasks on a "
            "4-connection pool, after 200 warm-up queries; rounds alternate rolekit and plain; "
            "the ratio is of the medians of the round medians"
        ),
        "bench_duration_s": round(time.monotonic() - started, 1),
    }
    write_json("client_overhead.json", data)
    return data
