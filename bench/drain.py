"""The drain against the whole deployment: what each client saw, and what ``finish`` did.

Each scenario runs real clients against real servers while rolekit's
``finish`` decides, and reports the clients' attempts and failures and the
outcome of every ``finish``:

* ``intermittent`` -- a job connects as the old member every second for
  20 ms and never moves: ``finish`` must refuse while it runs, and succeed
  once it stopped and the quiet period passed.  Its baseline is the drain
  before the quiet period (one look, ``quiet_period = 0``): it passes, and
  the job's next connections fail.
* ``standby-reader`` -- an application reads from a streaming standby as the
  old member: ``finish`` must refuse while it reads and succeed after it
  moved.  Its baseline is a drain that does not watch the standby.
* ``pgbouncer-auth_file`` / ``pgbouncer-auth_query`` -- clients through
  PgBouncer with its default timeouts (``server_idle_timeout`` 600 s):
  ``finish`` succeeds, closing the old member's idle server connections.

Then two costs: the drain's poll on the server (CPU of the polling backend,
latency per poll), and login latency with and without the login tracking
trigger (PostgreSQL 17).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from bench.common import MEMBERS, example, log, machine, median, percentile, rounded, write_json
from rolekit import command
from rolekit.errors import RolekitError
from rolekit.pg import catalog
from rolekit.pg.control import ControlConnection
from rolekit.project.config import Settings
from rolekit.testing import AppClient, Cluster, PgBouncer, Project

TOM, JERRY = MEMBERS


@dataclass
class Config:
    #: the quiet period of the scenarios (the default, 90 s, would make the bench slow;
    #: 5 s is still five times the gap of the intermittent job)
    quiet_s: float = 5.0
    #: drain timeout of the finishes expected to refuse
    refuse_timeout_s: float = 12.0
    #: drain timeout of the finishes expected to pass
    pass_timeout_s: float = 60.0
    #: connections each client makes after a baseline finish passed
    after_attempts: int = 20
    poll_seconds: float = 10.0
    idle_sessions: int = 50
    login_samples: int = 300


def _settings(project: Project, **changes: Any) -> Settings:
    base = Settings.load(project.root / "alembic.ini")
    return replace(base, database_url=project.url, **changes)


def _finish(settings: Settings, timeout: float) -> dict[str, Any]:
    """``rolekit rotate my_app finish --apply``; what it decided, how long it took."""
    err = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stderr(err):
            command.rotate_finish(settings, "my_app", "dev", apply=True, drain_timeout=timeout)
        outcome: dict[str, Any] = {"finish": "succeeded", "exit_code": 0}
    except RolekitError as exc:
        outcome = {"finish": "refused", "exit_code": int(exc.exit_code), "message": str(exc)[:300]}
    outcome["seconds"] = round(time.monotonic() - started, 2)
    outcome["drain_lines"] = [ln for ln in err.getvalue().splitlines() if "drain" in ln][-3:]
    return outcome


def _begin(settings: Settings) -> None:
    with contextlib.redirect_stderr(io.StringIO()):
        command.rotate_begin(settings, "my_app", "dev", apply=True)


def _login(project: Project, role: str, server: Cluster | None = None) -> Callable[[], Any]:
    target = server or project.cluster

    def connect() -> Any:
        return target.connect(role, project.secret_of(role), application_name="bench-app")

    return connect


def _result(
    scenario: str, what: str, finishes: list[dict[str, Any]], client: AppClient, **extra: Any
) -> dict[str, Any]:
    """One row of the table: what ran, what each finish did, what the client saw."""
    clients = {"attempts": client.attempts, "failures": len(client.failures), **extra}
    return {"scenario": scenario, "what": what, "finishes": finishes, "clients": clients}


def _after(client: AppClient, attempts: int) -> dict[str, Any]:
    """Let *client* make *attempts* more connections; count the failures among them."""
    start_attempts, start_failures = client.attempts, len(client.failures)
    deadline = time.monotonic() + attempts * (client.interval + 1) + 10
    while client.attempts - start_attempts < attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "attempts": client.attempts - start_attempts,
        "failures": len(client.failures) - start_failures,
        "first_failure": client.failures[start_failures]
        if len(client.failures) > start_failures
        else None,
    }


@contextlib.contextmanager
def _project(cluster: Cluster, work: Path, name: str) -> Iterator[Project]:
    user, password = cluster.create_migrator(f"migrator_{name.replace('-', '_')}")
    project = example(work / name, cluster, user=user, password=password)
    project.upgrade("dev")
    yield project


# -- scenarios --------------------------------------------------------------------


def intermittent(cfg: Config, major: int | None, work: Path) -> list[dict[str, Any]]:
    with (
        Cluster(major, log_statement="none") as cluster,
        _project(cluster, work, "intermittent") as project,
    ):
        settings = _settings(project, drain_quiet_period=cfg.quiet_s)
        _begin(settings)
        job = AppClient(_login(project, TOM), interval=1.0, hold=0.02)
        with job:
            refused = _finish(settings, cfg.refuse_timeout_s)
        passed = _finish(settings, cfg.pass_timeout_s)
        rolekit = _result(
            "intermittent",
            "job connects as the old member every 1 s for 20 ms, never moves",
            [refused | {"while": "job runs"}, passed | {"while": "job stopped"}],
            job,
        )
        # baseline: the drain as it was (one look, no quiet period), on the next rotation
        _begin(settings)
        leaving = JERRY if project.creds()[0] == TOM else TOM
        with AppClient(_login(project, leaving), interval=1.0, hold=0.02) as old_job:
            result = _finish(replace(settings, drain_quiet_period=0.0), cfg.pass_timeout_s)
            after = _after(old_job, cfg.after_attempts)
        baseline = _result(
            "intermittent-baseline-no-quiet-period",
            "the same job; finish with quiet_period = 0 (one look, the drain before this issue)",
            [result | {"while": "job runs"}],
            old_job,
            after_finish=after,
        )
    return [rolekit, baseline]


def standby_reader(cfg: Config, major: int | None, work: Path) -> list[dict[str, Any]]:
    with (
        Cluster(major, log_statement="none") as cluster,
        _project(cluster, work, "standby") as project,
        cluster.standby() as standby,
    ):
        url = f"postgresql://{standby.host}:{standby.port}/postgres"
        settings = _settings(project, drain_quiet_period=cfg.quiet_s, replicas=(url,))
        _begin(settings)
        reader = AppClient(_login(project, TOM, standby), interval=0.2, hold=0.02)
        with reader:
            refused = _finish(settings, cfg.refuse_timeout_s)
            reader.switch(_login(project, JERRY, standby))
            passed = _finish(settings, cfg.pass_timeout_s)
        rolekit = _result(
            "standby-reader",
            "app connects to a streaming standby as the old member every 0.2 s, then moves",
            [refused | {"while": "reader on the old member"}, passed | {"while": "reader moved"}],
            reader,
        )
        _begin(settings)
        with AppClient(_login(project, JERRY, standby), interval=0.2, hold=0.02) as old_reader:
            blind = replace(settings, replicas=(), replicas_unchecked=True)
            result = _finish(blind, cfg.pass_timeout_s)
            after = _after(old_reader, cfg.after_attempts)
        baseline = _result(
            "standby-reader-baseline-primary-only",
            "the same reader; finish watching the primary only (replicas = unchecked)",
            [result | {"while": "reader on the old member"}],
            old_reader,
            after_finish=after,
        )
    return [rolekit, baseline]


def pgbouncer(cfg: Config, major: int | None, work: Path, auth: str) -> dict[str, Any]:
    with (
        Cluster(major, log_statement="none") as cluster,
        _project(cluster, work, f"pgb-{auth}") as project,
    ):
        users = {m: project.secret_of(m) for m in MEMBERS} if auth == "file" else {}
        admin = ("pgbouncer_admin", secrets.token_urlsafe(18))
        with PgBouncer(cluster, auth=auth, users=users, admin=admin) as bouncer:
            settings = _settings(
                project, drain_quiet_period=cfg.quiet_s, poolers=(bouncer.admin_url(),)
            )

            def through(role: str) -> Callable[[], Any]:
                def connect() -> Any:
                    return psycopg2.connect(
                        host=bouncer.host,
                        port=bouncer.port,
                        dbname=bouncer.dbname,
                        user=role,
                        password=project.secret_of(role),
                        application_name="bench-pooled",
                    )

                return connect

            apps = [AppClient(through(TOM), interval=0.05, hold=0.01) for _ in range(4)]
            with contextlib.ExitStack() as stack:
                for app in apps:
                    stack.enter_context(app)
                time.sleep(2)
                _begin(settings)
                if auth == "file":
                    bouncer.set_users({JERRY: project.secret_of(JERRY)})
                time.sleep(0.5)  # the apps pick up the new credentials
                for app in apps:
                    app.switch(through(JERRY))
                time.sleep(1)
                passed = _finish(settings, cfg.pass_timeout_s)
                time.sleep(2)
            return {
                "scenario": f"pgbouncer-auth_{auth}",
                "what": f"4 clients through PgBouncer {bouncer.version.split()[-1]} (auth_{auth}, "
                "default server_lifetime/server_idle_timeout), connect per query every 50 ms",
                "finishes": [passed],
                "clients": {
                    "attempts": sum(a.attempts for a in apps),
                    "failures": sum(len(a.failures) for a in apps),
                },
                "pgbouncer_settings": bouncer.settings,
            }


# -- costs --------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _polling(
    control: ControlConnection, poll: Callable[[], object], seconds: float
) -> dict[str, float]:
    """Run *poll* every 10 ms for *seconds*; the polling backend's CPU and the latency."""
    pid = control.scalar(sql.SQL("SELECT pg_backend_pid()"))
    latencies = []
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        began = time.perf_counter()
        poll()
        latencies.append(time.perf_counter() - began)
        time.sleep(max(0.0, 0.01 - (time.perf_counter() - began)))
    elapsed, cpu = time.monotonic() - t0, _cpu_seconds(pid) - cpu0
    ms = [x * 1000 for x in latencies]
    return {
        "polls_per_second": round(len(latencies) / elapsed, 1),
        "poll_latency_ms_p50": rounded(median(ms), 3) or 0.0,
        "poll_latency_ms_p99": rounded(percentile(ms, 99), 3) or 0.0,
        "server_cpu_ms_per_second": round(cpu / elapsed * 1000, 1),
        "server_cpu_share_of_one_core_pct": round(cpu / elapsed * 100, 2),
        "server_cpu_us_per_poll": round(cpu / len(latencies) * 1e6, 1),
    }


def poll_cost(cfg: Config, major: int | None) -> dict[str, Any]:
    """The drain's poll (one prepared query per host every 10 ms) as the server pays for it,
    beside the same poll through the ``pg_stat_activity`` view."""
    with Cluster(major, log_statement="none") as cluster:
        idle = [cluster.connect() for _ in range(cfg.idle_sessions)]
        try:
            with ControlConnection.open(cluster.url()) as control:
                pid = control.scalar(sql.SQL("SELECT pg_backend_pid()"))
                cpu0 = _cpu_seconds(pid)
                time.sleep(cfg.poll_seconds / 2)
                idle_ms = (_cpu_seconds(pid) - cpu0) / (cfg.poll_seconds / 2) * 1000
                prepared = catalog.SessionPoll(control, [TOM])
                drain_poll = _polling(control, prepared, cfg.poll_seconds)
                prepared.close()
                view = _polling(control, lambda: catalog.sessions(control, [TOM]), cfg.poll_seconds)
        finally:
            for conn in idle:
                conn.close()
    return {
        "backends_in_pg_stat_activity": cfg.idle_sessions + 1,
        "idle_backend_cpu_ms_per_second": round(idle_ms, 1),
        "drain_poll": drain_poll,
        "view_poll": view,
    }


def tracking_cost(cfg: Config, work: Path) -> dict[str, Any]:
    """Login latency on PostgreSQL 17 without the tracking trigger, and with it for a
    role that is not leaving (one lookup in the leaving table) and for the leaving
    member (one upsert).

    Rounds alternate, the trigger disabled and enabled in turn
    (``ALTER EVENT TRIGGER``), so the machine's drift hits all three alike.
    """
    with Cluster(17, log_statement="none") as cluster:
        project = example(work / "tracking", cluster)
        project.upgrade("dev")
        _begin(_settings(project, drain_quiet_period=0.0))  # tom leaves, jerry comes in
        project.add_revision(
            "0003", "0002", "op.enable_login_tracking()", "op.disable_login_tracking()"
        )
        project.upgrade("dev")
        # FamilyLogin runs again and marks the leaving member (tom) for the trigger
        project.upgrade("dev", x={"rerun": "allow_login_for_my_app"})
        samples: dict[str, list[float]] = {"without": [], "other": [], "leaving": []}
        rounds = 5
        for _ in range(rounds):
            for key, role, enabled in (
                ("without", JERRY, False),
                ("other", JERRY, True),
                ("leaving", TOM, True),
            ):
                state = "ENABLE" if enabled else "DISABLE"
                cluster.query_one(f"ALTER EVENT TRIGGER rolekit_login_tracking {state}")
                for _ in range(cfg.login_samples // rounds):
                    began = time.perf_counter()
                    _login(project, role)().close()
                    samples[key].append((time.perf_counter() - began) * 1000)
    base = median(samples["without"]) or 1.0
    result: dict[str, Any] = {
        "postgresql_major": 17,
        "samples_each": len(samples["without"]),
    }
    for key, values in samples.items():
        result[f"login_ms_p50_{key}"] = rounded(median(values), 2)
        result[f"login_ms_p99_{key}"] = rounded(percentile(values, 99), 2)
        result[f"ratio_{key}"] = rounded((median(values) or 0) / base, 3)
    return result


def run(major: int | None = None, cfg: Config | None = None) -> dict[str, Any]:
    cfg = cfg or Config()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-drain-"))
    try:
        with Cluster(major, log_statement="none") as probe:
            info = machine(probe)
        scenarios: list[dict[str, Any]] = []
        log("drain: intermittent client")
        scenarios += intermittent(cfg, major, work)
        log("drain: standby reader")
        scenarios += standby_reader(cfg, major, work)
        for auth in ("file", "query"):
            log(f"drain: pgbouncer auth_{auth}")
            scenarios.append(pgbouncer(cfg, major, work, auth))
        log("drain: poll cost")
        poll = poll_cost(cfg, major)
        log("drain: login tracking cost (PostgreSQL 17)")
        track = tracking_cost(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # holds the projects' passwords
    data = {
        "machine": info,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "scenarios": scenarios,
        "failures_where_rolekit_succeeded": sum(
            s["clients"]["failures"] for s in scenarios if "baseline" not in s["scenario"]
        ),
        "poll_cost": poll,
        "tracking_cost": track,
        "bench_duration_s": round(time.monotonic() - started, 1),
    }
    write_json("drain.json", data)
    return data
