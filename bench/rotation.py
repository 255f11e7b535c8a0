"""Password rotation under load: rolekit against two single-step baselines.

One cluster, one run, one application lag (apps pick up new credentials
``lag`` seconds after the database changed).  First the three rolekit
scenarios run side by side through the same rotations, driven by the CLI:

* ``rolekit-direct`` -- worker processes loop connect -> ``SELECT 1`` ->
  disconnect straight to PostgreSQL;
* ``rolekit-client-pooled`` -- a pooled SQLAlchemy app built with
  :mod:`rolekit.client`, threads running queries;
* ``rolekit-pgbouncer`` -- worker processes connecting through PgBouncer
  (and a second PgBouncer using ``auth_query``).

Then the client stacks alone, through more rotations: one pooled app per
stack (:data:`STACK_APPS`: SQLAlchemy on psycopg2 and on psycopg 3, psycopg_pool
sync and async, an asyncpg pool, SQLAlchemy's async engine on asyncpg and on
psycopg 3), until each ran
``min_stack_queries`` queries.  Alone, so that the asyncio stacks are not
starved of CPU by the connect-per-query workers and their latencies compare.

Then the baselines, each with the same worker processes:

* ``baseline-single-user-alter-password`` -- one login user whose password
  is changed in place (``ALTER ROLE ... PASSWORD``);
* ``baseline-liquibase-one-step-flip`` -- the seed changelog's one batch
  ``ALTER ROLE my_app_tom NOLOGIN; ALTER ROLE my_app_jerry LOGIN``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import pooled
from bench.common import MEMBERS, RESULTS, example, log, machine, write_json
from bench.load import MP, Target, WorkerPool, wait_ready, write_creds
from bench.stats import Record, SessionSampler, Window, per_second, summarize
from rolekit import command
from rolekit.errors import RolekitError
from rolekit.project.config import Settings
from rolekit.secrets import generate_password
from rolekit.testing import Cluster, Project
from rolekit.testing.pgbouncer import PgBouncer

SINGLE_USER = "app_single"
#: the client-stacks phase: its pooled apps, by scenario name, and the stack of each
STACK_APPS = {f"stack-{stack}": stack for stack in pooled.STACKS}
AUTH_QUERY_NAME = "rolekit-pgbouncer-auth-query"
AUTH_QUERY_NOTE = (
    "The same rotations through a second PgBouncer that authenticates with auth_query "
    "(SCRAM pass-through: PgBouncer logs in to the server with SCRAM keys cached from the "
    "clients' logins). This works only because `rotate begin` leaves the password of the "
    "member in use alone: rewriting it, even to the same password, gives it a new SCRAM "
    "salt, so PgBouncer's cached keys go stale and the pool refuses that member for "
    "server_login_retry. rolekit did that before commit b30c90e; "
    "`python -m bench.pgbouncer_control` reproduces both behaviours by hand."
)


@dataclass
class Config:
    lag_s: float = 0.5
    direct_workers: int = 16
    pgbouncer_workers: int = 4
    pooled_threads: int = 4
    pool_size: int = 4
    #: at least this many full rotations (an even number ends on the first member)...
    rotations: int = 2
    #: ...more, in pairs, while the attempts below are not reached
    max_rotations: int = 6
    #: rolekit scenarios together must reach this many attempts
    min_attempts: int = 10_000
    #: each stack of the client-stacks phase must run this many queries
    min_stack_queries: int = 6_000
    #: ...but the rolekit phase stops after this many seconds regardless
    max_phase_s: float = 300.0
    steady_s: float = 4.0
    drain_timeout_s: float = 60.0
    #: the drain's quiet period: the load connects every few milliseconds, so a
    #: short one suffices here (the default, 90 s, would only make the bench slow)
    quiet_s: float = 3.0
    baseline_changes: int = 2
    #: also run a PgBouncer using auth_query (see AUTH_QUERY_NOTE)
    pgbouncer_auth_query: bool = True
    auth_query_workers: int = 2


@dataclass
class Phase:
    """One stretch of load: its clock, its events and the catalog samples."""

    name: str
    started: float = 0.0
    ended: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rotations: int = 0

    def mark(self, name: str, **extra: Any) -> float:
        t = time.time()
        self.events.append({"name": name, "t": round(t - self.started, 3), **extra})
        log(f"{self.name}: {name} {extra or ''}")
        return t

    def to_json(self, sampler: SessionSampler) -> dict[str, Any]:
        return {
            "duration_s": round(self.ended - self.started, 2),
            "rotations": self.rotations,
            "events": self.events,
            "rotation_windows_s": [
                [round(a - self.started, 3), round(b - self.started, 3)] for a, b in self.windows
            ],
            "errors": self.errors,
            "sampler_error": sampler.error,
            "session_samples": [
                {
                    "t": round(s["t"] - self.started, 3),
                    "sessions": s["sessions"],
                    "by_app": s["by_app"],
                }
                for s in sampler.samples
                if self.started <= s["t"] <= self.ended
            ],
        }


def _scenario(
    name: str,
    phase: Phase,
    records: list[Record],
    errors: Counter[str],
    sampler: SessionSampler,
    latency_of: str = "connect",
    **extra: Any,
) -> dict[str, Any]:
    result = summarize(
        name,
        records,
        errors,
        started=phase.started,
        ended=phase.ended,
        windows=phase.windows,
        latency_of=latency_of,
    )
    sessions = sampler.per_second(phase.started, phase.ended)
    timeline = per_second(records, phase.started, phase.ended)
    for row, sess in zip(timeline, sessions, strict=True):
        row["sessions"] = sess["sessions"]
    result.update(phase=phase.name, **extra, timeline=timeline)
    return result


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


# -- rolekit -------------------------------------------------------------------


class _Rotations:
    """Drives full rotations through rolekit's Python API while the load runs.

    ``rolekit.command.rotate_begin``/``rotate_finish`` with ``apply`` do what
    ``rolekit rotate ... --apply`` does, without a Python start-up per step.
    """

    def __init__(
        self,
        cfg: Config,
        project: Project,
        bouncer: PgBouncer,
        phase: Phase,
        creds_path: Path,
        connecting: list[Any],
        poolers: tuple[str, ...],
        enough: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg, self.project, self.bouncer, self.phase = cfg, project, bouncer, phase
        self.creds_path, self.connecting = creds_path, connecting
        self.enough = enough or (lambda: self.attempts() >= cfg.min_attempts)
        # the drain watches both PgBouncers and closes their idle server
        # connections of the old member (they run with default timeouts)
        self.settings = replace(
            Settings.load(project.root / "alembic.ini"),
            database_url=project.url,
            drain_quiet_period=cfg.quiet_s,
            poolers=poolers,
        )

    def attempts(self) -> int:
        """Connection attempts (the pooled app's queries are not connection attempts)."""
        return sum(p.attempts() for p in self.connecting)

    def _step(self, name: str, call: Callable[[], object]) -> tuple[bool, str]:
        """Run one rolekit step, keeping what it printed (the drain's progress)."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                call()
        except RolekitError as exc:
            message = f"rolekit rotate {name} failed: {exc}"
            self.phase.errors.append(message)
            log(message)
            return False, err.getvalue()
        return True, err.getvalue()

    def rotate(self, n: int) -> bool:
        """One full rotation: begin, lag, app switch, finish, lag, creds again."""
        cfg, project, phase = self.cfg, self.project, self.phase
        before = project.creds()[0]
        t_begin = phase.mark("begin", rotation=n, outgoing=before)
        ok, _ = self._step(
            "begin", lambda: command.rotate_begin(self.settings, "my_app", "dev", apply=True)
        )
        t_db = time.time()
        phase.events[-1]["duration_s"] = round(t_db - t_begin, 3)
        if not ok:
            return False
        # the pooler's deploy step: its auth_file gets the new password, then a reload
        self.bouncer.set_users({m: project.secret_of(m) for m in MEMBERS})
        phase.events[-1]["pgbouncer_reloaded_after_s"] = round(time.time() - t_db, 3)
        user, password = project.creds()
        _sleep_until(t_db + cfg.lag_s)
        write_creds(self.creds_path, user, password)
        phase.mark("app switch", rotation=n, incoming=user, lag_s=round(time.time() - t_db, 3))
        time.sleep(cfg.steady_s)
        t_finish = phase.mark("finish", rotation=n)
        ok, stderr = self._step(
            "finish",
            lambda: command.rotate_finish(
                self.settings, "my_app", "dev", apply=True, drain_timeout=cfg.drain_timeout_s
            ),
        )
        t_done = time.time()
        phase.events[-1]["duration_s"] = round(t_done - t_finish, 3)
        phase.events[-1]["drain"] = [ln for ln in stderr.splitlines() if "drain" in ln][-3:]
        phase.windows.append((t_begin, t_done))
        if not ok:
            return False
        # the apps re-read the credentials after finish too (same member: no change)
        _sleep_until(t_done + cfg.lag_s)
        write_creds(self.creds_path, *project.creds())
        time.sleep(cfg.steady_s)
        return True

    def _more(self, n: int, longest: float, deadline: float) -> bool:
        cfg = self.cfg
        enough = self.enough()
        time_left = time.time() + 2 * longest < deadline
        return (
            n < cfg.rotations or n % 2 == 1 or (not enough and n < cfg.max_rotations and time_left)
        )

    def run(self) -> int:
        """Rotate at least ``cfg.rotations`` times (an even number: back to tom)."""
        cfg, phase = self.cfg, self.phase
        n, longest = 0, 0.0
        time.sleep(cfg.steady_s)
        deadline = phase.started + cfg.max_phase_s
        while self._more(n, longest, deadline):
            started = time.time()
            n += 1
            if not self.rotate(n):
                break
            phase.rotations = n
            longest = max(longest, time.time() - started)
        while not self.enough() and time.time() < deadline:
            time.sleep(0.5)
        return n


def _pooled_apps(
    cfg: Config, cluster: Cluster, creds_path: Path, work: Path, stacks: dict[str, str]
) -> dict[str, pooled.PooledApp]:
    return {
        name: pooled.PooledApp(
            name,
            cluster,
            creds_path,
            work,
            stack=stack,
            threads=cfg.pooled_threads,
            pool_size=cfg.pool_size,
        )
        for name, stack in stacks.items()
    }


def _app_scenarios(
    cfg: Config, phase: Phase, apps: dict[str, pooled.PooledApp], sampler: SessionSampler
) -> list[dict[str, Any]]:
    scenarios = []
    for name, app in apps.items():
        records, errors = app.join()
        scenarios.append(
            _scenario(
                name,
                phase,
                records,
                errors,
                sampler,
                latency_of="checkout+query",
                threads=cfg.pooled_threads,
                pool_size=cfg.pool_size,
                mode=pooled.STACKS[app.stack],
                physical_connects=app.physical_connects,
                client_provider=app.provider_stats,
            )
        )
    return scenarios


def _client_stacks_phase(
    cfg: Config,
    cluster: Cluster,
    project: Project,
    bouncer: PgBouncer,
    poolers: tuple[str, ...],
    work: Path,
    sampler: SessionSampler,
) -> tuple[Phase, list[dict[str, Any]]]:
    """The pooled apps of every stack alone through rotations, each to ``min_stack_queries``."""
    phase = Phase("rolekit-client-stacks")
    creds_path = work / "stack-creds.json"
    write_creds(creds_path, *project.creds())
    apps = _pooled_apps(cfg, cluster, creds_path, work, STACK_APPS)
    go = MP.Event()
    for app in apps.values():
        app.start(go)
    wait_ready(list(apps.values()))
    phase.started = time.time()
    go.set()
    log("client stacks: load running")

    def enough() -> bool:
        return all(app.attempts() >= cfg.min_stack_queries for app in apps.values())

    # the PgBouncers still hold idle server connections from the first phase:
    # the drain watches them and closes those of the leaving member
    driver = _Rotations(cfg, project, bouncer, phase, creds_path, [], poolers, enough=enough)
    try:
        phase.rotations = driver.run()
    finally:
        phase.ended = time.time()
        for app in apps.values():
            app.stop()
    log(f"client stacks: {phase.rotations} rotations in {phase.ended - phase.started:.1f}s")
    return phase, _app_scenarios(cfg, phase, apps, sampler)


def _rolekit_phase(
    cfg: Config,
    cluster: Cluster,
    project: Project,
    bouncer: PgBouncer,
    auth_query: PgBouncer | None,
    poolers: tuple[str, ...],
    work: Path,
    sampler: SessionSampler,
) -> tuple[Phase, list[dict[str, Any]]]:
    phase = Phase("rolekit")
    creds_path = work / "app-creds.json"
    write_creds(creds_path, *project.creds())
    go = MP.Event()
    direct = WorkerPool(
        "rolekit-direct",
        cfg.direct_workers,
        Target(cluster.host, cluster.port, application_name="bench-direct"),
        creds_path,
        work,
    )
    through_bouncer = WorkerPool(
        "rolekit-pgbouncer",
        cfg.pgbouncer_workers,
        Target(bouncer.host, bouncer.port, application_name="bench-pgbouncer"),
        creds_path,
        work,
    )
    apps = _pooled_apps(
        cfg, cluster, creds_path, work, {"rolekit-client-pooled": "sqlalchemy-psycopg2"}
    )
    pools: list[Any] = [direct, through_bouncer, *apps.values()]
    aq_pool = None
    if auth_query is not None:
        aq_pool = WorkerPool(
            AUTH_QUERY_NAME,
            cfg.auth_query_workers,
            Target(auth_query.host, auth_query.port, application_name="bench-pgbouncer-auth-query"),
            creds_path,
            work,
        )
        pools.append(aq_pool)
    for pool in pools:
        pool.start(go)
    wait_ready(pools)
    phase.started = time.time()
    go.set()
    log("rolekit: load running")

    aq = [aq_pool] if aq_pool is not None else []
    driver = _Rotations(
        cfg, project, bouncer, phase, creds_path, [direct, through_bouncer, *aq], poolers
    )
    try:
        n = driver.run()
    finally:
        phase.ended = time.time()
        for pool in pools:
            pool.stop()
    attempts = driver.attempts
    phase.rotations = n
    log(
        f"rolekit: {n} rotations, {attempts()} connection attempts in {phase.ended - phase.started:.1f}s; collecting"
    )
    scenarios = []
    records, errors = direct.join()
    scenarios.append(
        _scenario(
            "rolekit-direct",
            phase,
            records,
            errors,
            sampler,
            workers=cfg.direct_workers,
            mode="processes, connect per query",
        )
    )
    scenarios += _app_scenarios(cfg, phase, apps, sampler)
    records, errors = through_bouncer.join()
    scenarios.append(
        _scenario(
            "rolekit-pgbouncer",
            phase,
            records,
            errors,
            sampler,
            workers=cfg.pgbouncer_workers,
            mode="processes, connect per query through PgBouncer",
            pgbouncer=bouncer.version,
            pgbouncer_settings=bouncer.settings,
            pgbouncer_reloads=bouncer.reloads,
            pgbouncer_log=bouncer.log_summary(),
        )
    )
    if auth_query is not None and aq_pool is not None:
        records, errors = aq_pool.join()
        scenarios.append(
            _scenario(
                AUTH_QUERY_NAME,
                phase,
                records,
                errors,
                sampler,
                workers=cfg.auth_query_workers,
                mode="processes, connect per query through a second PgBouncer using auth_query",
                pgbouncer=auth_query.version,
                pgbouncer_settings=auth_query.settings,
                pgbouncer_log=auth_query.log_summary(),
                note=AUTH_QUERY_NOTE,
            )
        )
    return phase, scenarios


# -- baselines -------------------------------------------------------------------

Change = Callable[[], tuple[str, str]]


def _baseline_phase(
    name: str,
    cfg: Config,
    cluster: Cluster,
    work: Path,
    sampler: SessionSampler,
    initial: tuple[str, str],
    changes: list[tuple[str, Change]],
) -> tuple[Phase, dict[str, Any]]:
    phase = Phase(name)
    creds_path = work / f"{name}-creds.json"
    write_creds(creds_path, *initial)
    go = MP.Event()
    workers = WorkerPool(
        name,
        cfg.direct_workers,
        Target(cluster.host, cluster.port, application_name="bench-baseline"),
        creds_path,
        work,
    )
    workers.start(go)
    wait_ready([workers])
    phase.started = time.time()
    go.set()
    try:
        time.sleep(cfg.steady_s)
        for n, (label, change) in enumerate(changes, 1):
            t_change = phase.mark(label, rotation=n)
            user, password = change()
            t_db = time.time()
            phase.events[-1]["duration_s"] = round(t_db - t_change, 3)
            _sleep_until(t_db + cfg.lag_s)
            write_creds(creds_path, user, password)
            t_switch = phase.mark(
                "app switch", rotation=n, incoming=user, lag_s=round(time.time() - t_db, 3)
            )
            phase.windows.append((t_change, t_switch + 1.0))
            phase.rotations = n
            time.sleep(cfg.steady_s)
    finally:
        phase.ended = time.time()
        workers.stop()
    records, errors = workers.join()
    return phase, _scenario(
        name,
        phase,
        records,
        errors,
        sampler,
        workers=cfg.direct_workers,
        mode="processes, connect per query",
    )


def _single_user(
    cfg: Config, cluster: Cluster, work: Path, sampler: SessionSampler
) -> tuple[Phase, dict[str, Any]]:
    password = generate_password()
    cluster.query_one(f"CREATE ROLE {SINGLE_USER} LOGIN")
    cluster.set_password(SINGLE_USER, password)

    def change() -> tuple[str, str]:
        new = generate_password()
        cluster.set_password(SINGLE_USER, new)
        return SINGLE_USER, new

    return _baseline_phase(
        "baseline-single-user-alter-password",
        cfg,
        cluster,
        work,
        sampler,
        (SINGLE_USER, password),
        [("alter password", change)] * cfg.baseline_changes,
    )


def _liquibase(
    cfg: Config, cluster: Cluster, project: Project, work: Path, sampler: SessionSampler
) -> tuple[Phase, dict[str, Any]]:
    """The seed's ``allow_login_for_my_app`` changeset, flipped in one batch."""
    passwords = {m: project.secret_of(m) for m in MEMBERS}
    active = project.creds()[0]
    order = [active, next(m for m in MEMBERS if m != active)]
    changes: list[tuple[str, Change]] = []
    for n in range(cfg.baseline_changes):
        old, new = order[n % 2], order[(n + 1) % 2]

        def flip(old: str = old, new: str = new) -> tuple[str, str]:
            cluster.query_one(f"ALTER ROLE {old} NOLOGIN; ALTER ROLE {new} LOGIN")
            return new, passwords[new]

        changes.append(("one-step flip", flip))
    return _baseline_phase(
        "baseline-liquibase-one-step-flip",
        cfg,
        cluster,
        work,
        sampler,
        (active, passwords[active]),
        changes,
    )


# -- the benchmark -----------------------------------------------------------------


def run(major: int | None = None, cfg: Config | None = None) -> dict[str, Any]:
    cfg = cfg or Config()
    bench_started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-rotation-"))
    # log_statement=all would log every SELECT 1 of the load: measure without it
    with Cluster(major, log_statement="none") as cluster:
        log(f"rotation: {cluster!r}")
        info = machine(cluster)
        migrator, migrator_password = cluster.create_migrator()
        project = example(work / "project", cluster, user=migrator, password=migrator_password)
        project.upgrade("dev")
        sampler = SessionSampler(cluster, [*MEMBERS, SINGLE_USER])
        sampler.start()
        phases: dict[str, Any] = {}
        scenarios: list[dict[str, Any]] = []
        try:
            users = {m: project.secret_of(m) for m in MEMBERS}
            with contextlib.ExitStack() as stack:
                admin = ("pgbouncer_admin", generate_password())
                bouncer = stack.enter_context(
                    PgBouncer(cluster, auth="file", users=users, admin=admin)
                )
                auth_query = None
                if cfg.pgbouncer_auth_query:
                    auth_query = stack.enter_context(PgBouncer(cluster, auth="query", admin=admin))
                info["pgbouncer"] = bouncer.version
                poolers = tuple(b.admin_url() for b in (bouncer, auth_query) if b is not None)
                phase, found = _rolekit_phase(
                    cfg, cluster, project, bouncer, auth_query, poolers, work, sampler
                )
                phases[phase.name] = phase
                scenarios += found
                phase, found = _client_stacks_phase(
                    cfg, cluster, project, bouncer, poolers, work, sampler
                )
                phases[phase.name] = phase
                scenarios += found
            status = project.rolekit("status", "--context", "dev", "--json", check=False)
            phase, scenario = _single_user(cfg, cluster, work, sampler)
            phases[phase.name] = phase
            scenarios.append(scenario)
            phase, scenario = _liquibase(cfg, cluster, project, work, sampler)
            phases[phase.name] = phase
            scenarios.append(scenario)
        finally:
            sampler.stop()
            shutil.rmtree(work, ignore_errors=True)  # holds the project's passwords
    rolekit_attempts = sum(s["attempts"] for s in scenarios if s["phase"].startswith("rolekit"))
    data = {
        "machine": info,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "rolekit_attempts_total": rolekit_attempts,
        "rolekit_failures_total": sum(
            s["failed_connections"] + s["failed_queries"]
            for s in scenarios
            if s["phase"].startswith("rolekit")
        ),
        "scenarios": scenarios,
        "rolekit_status_after_rotations": _json_or_text(status.stdout),
        "phases": {name: p.to_json(sampler) for name, p in phases.items()},
    }
    data["bench_duration_s"] = round(time.monotonic() - bench_started, 1)
    write_json("rotation_under_load.json", data)
    from bench.plot import timeline

    timeline(data, RESULTS / "rotation_timeline.png")
    return data
