"""Helpers shared by the benchmarks: machine facts, projects, subprocesses, stats."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rolekit.testing import Cluster, Project

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MEMBERS = ("my_app_tom", "my_app_jerry")


def log(message: str) -> None:
    """Progress on stderr, with a timestamp; the benchmarks take minutes."""
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# -- machine -------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine(cluster: Cluster | None = None) -> dict[str, Any]:
    """The facts a reader needs to compare numbers across machines."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    if cluster is not None:
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
        info["postgresql"] = str(row[0]) if row else f"{cluster.major}"
        info["postgresql_major"] = cluster.major
    return info


# -- results -------------------------------------------------------------------


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(REPO)}")
    return path


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- projects ------------------------------------------------------------------


def example(
    root: Path,
    cluster: Cluster,
    *,
    user: str | None = None,
    password: str | None = None,
    contexts: Sequence[str] = ("dev",),
) -> Project:
    """The repository's example project copied to *root*, with fresh member passwords."""
    return Project.copy(
        REPO, root, cluster, members=MEMBERS, contexts=contexts, user=user, password=password
    )


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args, **kw)
    return time.perf_counter() - started, result
