"""Soak: back-to-back ``rotate auto`` runs under load, with the apps following only what is published.

``rolekit rotate my_app auto --max-age 0 --apply --publish CMD`` runs
``runs`` times in a row (through :func:`rolekit.command.rotate_auto`, what
the CLI calls).  The publish command writes the credentials document to a
file, atomically, and nothing else tells the applications anything:

* ``soak-client-pooled`` -- a pooled app on :mod:`rolekit.client` reading
  that file with ``CredentialsProvider.from_file``;
* ``soak-laggard`` -- worker processes that connect per query with the
  credentials of that file and move only when the file changes.

Reported: attempts, failures (target 0), and the wall time of each run
(median and max).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import pooled
from bench.common import example, log, machine, median, rounded, write_json
from bench.load import MP, Target, WorkerPool, wait_ready
from bench.stats import summarize
from rolekit import command
from rolekit.project.config import Settings
from rolekit.testing import Cluster


@dataclass
class Config:
    runs: int = 20
    laggard_workers: int = 4
    pooled_threads: int = 4
    #: the drain's quiet period: the apps connect every few milliseconds, so 3 s is
    #: hundreds of their connections (the default, 90 s, would take half an hour)
    quiet_s: float = 3.0
    move_timeout_s: float = 120.0


def _publish_command(creds_path: Path) -> str:
    """A shell command that writes its stdin to *creds_path* atomically."""
    tmp = creds_path.with_name(creds_path.name + ".publishing")
    return f"cat > {tmp} && chmod 600 {tmp} && mv {tmp} {creds_path}"


def run(major: int | None = None, cfg: Config | None = None) -> dict[str, Any]:
    cfg = cfg or Config()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-soak-"))
    with Cluster(major, log_statement="none") as cluster:
        info = machine(cluster)
        migrator, migrator_password = cluster.create_migrator()
        project = example(work / "project", cluster, user=migrator, password=migrator_password)
        project.upgrade("dev")
        creds_path = work / "published.json"
        creds_path.write_text(
            command.creds(project.root / "alembic.ini", "my_app", "dev").render("json")
        )
        settings = replace(
            Settings.load(project.root / "alembic.ini"),
            database_url=project.url,
            drain_quiet_period=cfg.quiet_s,
        )
        go = MP.Event()
        laggard = WorkerPool(
            "soak-laggard",
            cfg.laggard_workers,
            Target(cluster.host, cluster.port, application_name="bench-laggard"),
            creds_path,
            work,
        )
        app = pooled.PooledApp(
            "soak-client-pooled", cluster, creds_path, work, stack="psycopg-pool",
            threads=cfg.pooled_threads, pool_size=cfg.pooled_threads,
        )  # fmt: skip
        for pool in (laggard, app):
            pool.start(go)
        wait_ready([laggard, app])
        phase_started = time.time()
        go.set()
        durations: list[float] = []
        results: Counter[str] = Counter()
        errors: list[str] = []
        try:
            time.sleep(2)
            for n in range(1, cfg.runs + 1):
                t0 = time.monotonic()
                try:
                    with contextlib.redirect_stderr(io.StringIO()):
                        result = command.rotate_auto(
                            settings, "my_app", "dev", apply=True, max_age="0",
                            publish=_publish_command(creds_path),
                            move_timeout=cfg.move_timeout_s, quiet_period=cfg.quiet_s,
                        )  # fmt: skip
                except Exception as exc:  # reported, and the soak goes on
                    result = f"failed: {type(exc).__name__}"
                    errors.append(f"run {n}: {exc}")
                durations.append(time.monotonic() - t0)
                results[result] += 1
                log(f"soak: run {n}/{cfg.runs}: {result} in {durations[-1]:.1f}s")
            time.sleep(2)
        finally:
            phase_ended = time.time()
            laggard.stop()
            app.stop()
        scenarios = []
        for name, pool in (("soak-laggard", laggard), ("soak-client-pooled", app)):
            records, errs = pool.join()
            summary = summarize(
                name, records, errs, started=phase_started, ended=phase_ended, windows=[]
            )
            scenarios.append({k: v for k, v in summary.items() if k != "timeline"})
    shutil.rmtree(work, ignore_errors=True)  # holds the project's passwords
    data = {
        "machine": info,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "runs": dict(results),
        "run_wall_time_s": {
            "median": rounded(median(durations)),
            "max": rounded(max(durations, default=None)),
            "each": [round(d, 2) for d in durations],
        },
        "errors": errors,
        "scenarios": scenarios,
        "attempts_total": sum(s["attempts"] for s in scenarios),
        "failures_total": sum(s["failed_connections"] + s["failed_queries"] for s in scenarios),
        "python": sys.version.split()[0],
        "bench_duration_s": round(time.monotonic() - started, 1),
    }
    write_json("soak.json", data)
    return data
