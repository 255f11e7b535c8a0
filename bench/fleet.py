"""Rotating many families: side by side, and ``--all``, against one rotation alone.

One cluster, one run.  The example project plus seven families added with
:meth:`rolekit.testing.Project.add_families` (eight in all: ``my_app`` and
``svc1`` .. ``svc7``), each with an application that connects every 0.2 s with
the credentials ``rolekit.client`` hands out now (``CredentialsProvider.from_project``,
which re-reads the files when they change), counting failed logins.

Each round, in turn (interleaved, so that a drift of the machine's load hits
every scenario alike), with ``--max-age 0 --apply --quiet-period Q``:

* ``one`` -- ``rolekit rotate my_app auto`` alone;
* ``parallel`` -- eight ``rolekit rotate FAMILY auto`` processes started at once
  (cron, a CI matrix, CronJobs);
* ``all`` -- one ``rolekit rotate --all auto``.

The figures: each scenario's median wall time, and ``parallel`` and ``all``
against ``one`` (the goal: eight families in at most 2.5 times one rotation;
one after another they would take eight times).
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import MEMBERS, example, log, machine, median, rounded, write_json
from rolekit.client import CredentialsProvider
from rolekit.testing import AppClient, Cluster, Project

#: the families each scenario rotates: the example's and seven added ones
ADDED = [f"svc{n}" for n in range(1, 8)]
FAMILIES = ["my_app", *ADDED]
#: seconds a leaving member must go unseen: the bulk of a rotation's wall time
QUIET_PERIOD = 3.0
ROUNDS = 3
_OPTIONS = ("--context", "dev", "--max-age", "0", "--apply", "--json")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rolekit.cli", *args, *_OPTIONS,
            "--quiet-period", str(QUIET_PERIOD), "--move-timeout", "120"]  # fmt: skip


def _run_all(project: Project, commands: list[list[str]]) -> float:
    """Start *commands* at once; the wall time until the last one ended."""
    started = time.perf_counter()
    procs = [project.spawn(*command) for command in commands]
    outs = [proc.communicate(timeout=600) for proc in procs]
    took = time.perf_counter() - started
    for proc, (_, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{err[-3000:]}")
    return took


SCENARIOS = {
    "one": lambda: [_cli("rotate", "my_app", "auto")],
    "parallel": lambda: [_cli("rotate", family, "auto") for family in FAMILIES],
    "all": lambda: [_cli("rotate", "--all", "auto")],
}


def _app(project: Project, family: str) -> AppClient:
    provider = CredentialsProvider.from_project(
        family,
        "dev",
        state_file=project.state_path,
        secrets_file=project.root / "passwords.env",
        members=MEMBERS if family == "my_app" else [f"{family}_a", f"{family}_b"],
    )

    def connect() -> Any:
        user, secret = provider.current().preferred
        return project.cluster.connect(user, secret.reveal(), application_name="bench-fleet")

    return AppClient(connect, interval=0.2)


def measure(major: int | None, work: Path) -> dict[str, Any]:
    with Cluster(major) as cluster:
        project = example(work / "project", cluster)
        project.upgrade("dev")
        project.add_families(ADDED)
        times: dict[str, list[float]] = {name: [] for name in SCENARIOS}
        with ExitStack() as stack:
            apps = {f: stack.enter_context(_app(project, f)) for f in FAMILIES}
            for round_ in range(1, ROUNDS + 1):
                for name, commands in SCENARIOS.items():
                    took = _run_all(project, commands())
                    times[name].append(took)
                    log(f"fleet round {round_}: {name} {took:.2f}s")
            failures = {f: len(app.failures) for f, app in apps.items()}
            attempts = {f: app.attempts for f, app in apps.items()}
        info = machine(cluster)
    medians = {name: median(values) for name, values in times.items()}
    one = medians["one"] or 1.0
    return {
        "machine": info,
        "config": {
            "families": len(FAMILIES),
            "quiet_period_s": QUIET_PERIOD,
            "rounds": ROUNDS,
            "app_interval_s": 0.2,
        },
        "median_s": {name: rounded(value) for name, value in medians.items()},
        "runs_s": {name: [rounded(v) for v in values] for name, values in times.items()},
        "ratio_vs_one": {name: rounded((medians[name] or 0) / one) for name in ("parallel", "all")},
        "app_attempts": attempts,
        "app_failed_logins": failures,
    }


def run(major: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rolekit-bench-fleet-") as tmp:
        result = measure(major, Path(tmp))
    log(
        f"fleet: one {result['median_s']['one']}s, parallel {result['median_s']['parallel']}s "
        f"({result['ratio_vs_one']['parallel']}x), all {result['median_s']['all']}s "
        f"({result['ratio_vs_one']['all']}x); failed logins {result['app_failed_logins']}"
    )
    write_json("fleet.json", result)
    return result


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else None)
