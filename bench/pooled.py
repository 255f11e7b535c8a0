"""A pooled SQLAlchemy application built on :mod:`rolekit.client`.

One process, several threads, one engine from :func:`rolekit.client.create_engine`
with a ``QueuePool``.  Its :class:`~rolekit.client.CredentialsProvider` reads
the same application credentials file the other apps use (so it follows the
rotation with the same lag) and re-reads it when the file changes; the engine
then replaces pooled connections of the old member at their next checkout.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Hashable
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


def _engine(url: str, creds_path: str, pool_size: int) -> tuple[Any, Any, Counter[str]]:
    """The app's engine on :mod:`rolekit.client`, and a count of its physical logins."""
    import os

    from sqlalchemy import event

    from rolekit.client import Credentials, CredentialsProvider, create_engine

    path = Path(creds_path)

    def fetch() -> Credentials:
        data = json.loads(path.read_text())
        return Credentials.of(data["user"], data["password"])

    def stamp() -> Hashable:
        info = os.stat(path)
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    provider = CredentialsProvider(
        fetch, stamp=stamp, description=f"{path.name} (bench app config)"
    )
    engine = create_engine(
        url,
        provider,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"application_name": "bench-pooled", "connect_timeout": 10},
    )
    physical: Counter[str] = Counter()
    lock = threading.Lock()

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute("SELECT session_user")
            row = cur.fetchone()
        with lock:
            physical[str(row[0]) if row else "?"] += 1

    return engine, provider, physical


def _query_once(engine: Any) -> tuple[int, str, str | None]:
    """One checkout and query: (status, user it ran as, error or None)."""
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


def _app_main(
    url: str,
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
    engine, provider, physical = _engine(url, creds_path, pool_size)
    records: list[tuple[float, float, int, str]] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def loop() -> None:
        mine: list[tuple[float, float, int, str]] = []
        errs: Counter[str] = Counter()
        while not stop.is_set():
            started, t0 = time.time(), time.perf_counter()
            status, user, error = _query_once(engine)
            mine.append((started, (time.perf_counter() - t0) * 1000, status, user))
            if error:
                errs[error] += 1
            with count.get_lock():
                count.value += 1
            time.sleep(think_s)
        with lock:
            records.extend(mine)
            errors.update(errs)

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    with ready.get_lock():
        ready.value += 1
    go.wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    engine.dispose()
    Path(out_path).write_text(
        json.dumps(
            {
                "records": records,
                "errors": dict(errors),
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
        threads: int = 4,
        pool_size: int = 4,
        think_s: float = 0.005,
    ) -> None:
        self.name = name
        self.url = f"postgresql+psycopg2://{cluster.host}:{cluster.port}/postgres"
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
                self.url,
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
