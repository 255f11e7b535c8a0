"""Client load: worker processes that connect, run ``SELECT 1`` and disconnect.

Applications read their credentials from a small JSON file the coordinator
rewrites (atomically) when it "redeploys" them; a worker re-reads the file
whenever its mtime changes, so a switch takes effect on the next connection.
Each worker keeps one record per attempt and writes them to a JSON file when
told to stop, so the coordinator can merge them on one wall clock.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from rolekit._fileio import atomic_write

#: status of an attempt
OK, CONNECT_FAILED, QUERY_FAILED = 0, 1, 2

MP = mp.get_context("spawn")


def write_creds(path: Path, user: str, password: str) -> None:
    """Replace the applications' credentials file atomically (mode 0600): a redeploy."""
    atomic_write(path, json.dumps({"user": user, "password": password}).encode(), fail=OSError)


class CredsReader:
    """Re-reads a credentials file when it changes (checked before every connect)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.user = ""
        self.password = ""

    def current(self) -> tuple[str, str]:
        info = os.stat(self.path)
        stamp = (info.st_mtime_ns, info.st_ino)
        if stamp != self._stamp:
            data = json.loads(self.path.read_text())
            self.user, self.password = data["user"], data["password"]
            self._stamp = stamp
        return self.user, self.password


#: niceness of the load generators: on a small machine 20 busy clients would
#: otherwise starve the server processes and the rolekit CLI under test
LOAD_NICENESS = 10


def lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(LOAD_NICENESS)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    dbname: str = "postgres"
    application_name: str = "bench"


def _first_line(exc: BaseException) -> str:
    """The error's first line, without the varying "connection to server at ... failed:"."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(" failed: ", 1)[-1].strip()


def connect_worker(
    target: Target,
    creds_path: str,
    out_path: str,
    ready: Any,
    go: Any,
    stop: Any,
    count: Any,
) -> None:
    """Loop connect -> SELECT 1 -> disconnect until *stop* is set."""
    lower_priority()
    creds = CredsReader(Path(creds_path))
    records: list[tuple[float, float, int, str]] = []
    errors: Counter[str] = Counter()
    with ready.get_lock():
        ready.value += 1
    go.wait()
    while not stop.is_set():
        user, password = creds.current()
        started = time.time()
        t0 = time.perf_counter()
        try:
            conn = psycopg2.connect(
                host=target.host,
                port=target.port,
                dbname=target.dbname,
                user=user,
                password=password,
                connect_timeout=10,
                application_name=target.application_name,
            )
        except psycopg2.Error as exc:
            records.append((started, (time.perf_counter() - t0) * 1000, CONNECT_FAILED, user))
            errors[_first_line(exc)] += 1
            with count.get_lock():
                count.value += 1
            continue
        connect_ms = (time.perf_counter() - t0) * 1000
        status = OK
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        except psycopg2.Error as exc:
            status = QUERY_FAILED
            errors[_first_line(exc)] += 1
        finally:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
        records.append((started, connect_ms, status, user))
        with count.get_lock():
            count.value += 1
    Path(out_path).write_text(json.dumps({"records": records, "errors": dict(errors)}))


class _Workers:
    """Shared counters of a load generator: how many are ready, attempts, stop."""

    def __init__(self, expected: int) -> None:
        self.ready = MP.Value("i", 0)
        self.count = MP.Value("q", 0)
        self.stop_event = MP.Event()
        self._expected = expected

    def is_ready(self) -> bool:
        with self.ready.get_lock():
            return bool(self.ready.value >= self._expected)

    def attempts(self) -> int:
        with self.count.get_lock():
            return int(self.count.value)

    def stop(self) -> None:
        self.stop_event.set()


def reap(proc: Any) -> None:
    """Join a load process, killing it if it hangs."""
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


class WorkerPool(_Workers):
    """N connect workers against one target, sharing one credentials file."""

    def __init__(self, name: str, n: int, target: Target, creds_path: Path, out_dir: Path) -> None:
        self.name = name
        self.target = target
        self.creds_path = creds_path
        self.out_paths = [out_dir / f"{name}-{i}.json" for i in range(n)]
        super().__init__(n)
        self.procs: list[Any] = []
        self.n = n

    def start(self, go: Any) -> None:
        for path in self.out_paths:
            proc = MP.Process(
                target=connect_worker,
                args=(
                    self.target,
                    str(self.creds_path),
                    str(path),
                    self.ready,
                    go,
                    self.stop_event,
                    self.count,
                ),
                daemon=True,
            )
            proc.start()
            self.procs.append(proc)

    def join(self) -> tuple[list[tuple[float, float, int, str]], Counter[str]]:
        records: list[tuple[float, float, int, str]] = []
        errors: Counter[str] = Counter()
        started = time.monotonic()
        for proc in self.procs:
            reap(proc)
        for path in self.out_paths:
            if not path.exists():
                errors["worker died without results"] += 1
                continue
            data = json.loads(path.read_text())
            records += [(r[0], r[1], r[2], r[3]) for r in data["records"]]
            errors.update(data["errors"])
        records.sort()
        took = time.monotonic() - started
        if took > 5:
            print(f"[bench] {self.name}: workers took {took:.0f}s to stop", file=sys.stderr)
        return records, errors


def wait_ready(pools: list[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.is_ready() for p in pools):
        if time.monotonic() > deadline:
            raise RuntimeError("load workers did not start in time")
        time.sleep(0.05)
