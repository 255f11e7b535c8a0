"""``bench/results/SUMMARY.md``: Markdown tables from whatever JSON results exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import sops_overhead
from bench.common import RESULTS, log


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out


def _machine(m: dict[str, Any]) -> str:
    return (
        f"nproc {m.get('nproc')}, RAM {m.get('ram_gib')} GiB, CPU {m.get('cpu_model')}, "
        f"PostgreSQL {m.get('postgresql')}"
        + (f", {m['pgbouncer']}" if m.get("pgbouncer") else "")
        + f", Python {m.get('python')}, load average at start {m.get('loadavg_start', '-')}, "
        f"date {m.get('date')}"
    )


def _rotation(data: dict[str, Any]) -> list[str]:
    cfg = data["config"]
    lines = [
        "## Password rotation under load (`rotation_under_load.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        f"Application lag {cfg['lag_s']} s (apps switch credentials {cfg['lag_s']} s after the "
        f"database changed); {cfg['direct_workers']} worker processes per direct scenario, "
        f"{cfg['pgbouncer_workers']} through PgBouncer (auth_file, reloaded after `begin`), "
        f"{cfg.get('auth_query_workers', 0)} through a second PgBouncer (auth_query), "
        "a pooled `rolekit.client` app with "
        f"{cfg['pooled_threads']} threads (pool size {cfg['pool_size']}); "
        f"{data['phases']['rolekit']['rotations']} full rolekit rotations (tom → jerry → tom → …) "
        "driven by the CLI (`rotate begin --apply`, lag, app switch, "
        f"`rotate finish --apply --drain-timeout 60`, quiet period {cfg.get('quiet_s', 0)} s; "
        "both PgBouncers with their default timeouts, watched as `[rolekit] poolers`), "
        f"{cfg['baseline_changes']} changes per baseline. The rolekit scenarios run "
        "together through the same rotations; each baseline runs alone afterwards on the same "
        "cluster. Latencies are of successful attempts: connect for the connect-per-query "
        "scenarios, checkout+query for the pooled apps; the rotation window is begin → finish "
        "(rolekit) or change → app switch + 1 s (baselines). The `stack-*` scenarios ran "
        "afterwards, alone, through "
        f"{data['phases'].get('rolekit-client-stacks', {}).get('rotations', '?')} more "
        "rotations: one pooled app per stack (SQLAlchemy on psycopg2 and on psycopg 3, "
        "psycopg_pool sync and async, an asyncpg pool, SQLAlchemy's async engine on asyncpg and "
        "on psycopg 3), each reading the credentials file with "
        f"`CredentialsProvider.from_file`, {cfg['pooled_threads']} threads or tasks, pool size "
        f"{cfg['pool_size']}, until each ran {cfg.get('min_stack_queries', '?')} queries.",
        "",
    ]
    rows = [
        [
            s["name"],
            s["attempts"],
            s["failed_connections"],
            s["failed_queries"],
            s["connects_per_s"],
            s["p50_ms"],
            s["p99_ms"],
            s["steady_p50_ms"],
            s["steady_p99_ms"],
            s["rotation_p50_ms"],
            s["rotation_p99_ms"],
            s.get("max_ms"),
            s.get("failure_window_s"),
        ]
        for s in data["scenarios"]
    ]
    lines += _table(
        [
            "scenario",
            "attempts",
            "failed conn.",
            "failed queries",
            "ok/s",
            "p50 ms",
            "p99 ms",
            "steady p50",
            "steady p99",
            "rotation p50",
            "rotation p99",
            "max ms",
            "failure window s",
        ],
        rows,
    )
    rolekit_total = sum(
        s["attempts"] for s in data["scenarios"] if s.get("phase", "").startswith("rolekit")
    )
    lines += [
        "",
        f"rolekit scenarios together: {rolekit_total:,} attempts "
        "(the pooled apps' are queries, the others' connections), "
        f"{data.get('rolekit_failures_total', '?')} failures. Benchmark wall time: "
        f"{data.get('bench_duration_s', '?')} s.",
    ]
    for s in data["scenarios"]:
        if s.get("note"):
            lines += ["", f"`{s['name']}`: {s['note']}"]
    phase = data["phases"].get("rolekit", {})
    events = [e for e in phase.get("events", []) if e["name"] in ("begin", "finish")]
    if events:
        lines += ["", "rolekit phases (CLI wall time, under load):", ""]
        lines += _table(
            ["rotation", "phase", "at s", "took s"],
            [[e.get("rotation"), e["name"], e["t"], e.get("duration_s")] for e in events],
        )
    errors = {s["name"]: s["errors"] for s in data["scenarios"] if s["errors"]}
    if errors:
        lines += ["", "Errors seen:", ""]
        for name, errs in errors.items():
            for message, n in errs.items():
                lines.append(f"- `{name}`: {n:,} x `{message}`")
    if phase.get("errors"):
        lines += ["", "rolekit CLI errors:", ""] + [f"- {e}" for e in phase["errors"]]
    lines += ["", "![timeline](rotation_timeline.png)", ""]
    return lines


def _overhead(data: dict[str, Any]) -> list[str]:
    return [
        "## No-op upgrade overhead (`upgrade_overhead.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        *_table(
            ["", "rolekit example project", "plain Alembic"],
            [
                [
                    "no-op `upgrade head`, median s",
                    data["noop_median_s"],
                    data["alembic_noop_median_s"],
                ],
                [
                    "statements sent in the no-op",
                    data["noop_statements"],
                    data["alembic_noop_statements"],
                ],
                [
                    "upgrade from base on a fresh cluster, s",
                    data["full_apply_s"],
                    data["alembic_full_apply_s"],
                ],
            ],
        ),
        "",
        f"**ratio_noop_vs_alembic = {data['ratio_noop_vs_alembic']}** "
        f"({data['runs_each']} interleaved runs each, {data['revisions_each']} revisions each; "
        "each run is a fresh `alembic` subprocess, so Python start-up and imports are included). "
        f"Benchmark wall time: {data.get('bench_duration_s', '?')} s.",
        "",
        *_overhead_ratios(data),
    ]


def _overhead_ratios(data: dict[str, Any]) -> list[str]:
    if "ratio_noop_cpu_vs_alembic" not in data:
        return []
    goal = data.get("goal_ratio_noop_vs_alembic", 1.05)
    met = "met" if data["ratio_noop_vs_alembic"] <= goal else "**not met**"
    return [
        f"Median of the pairwise wall-time ratios: {data['ratio_noop_pairwise_median']}; "
        f"CPU time (user + system of each process): {data['noop_cpu_median_s']} s against "
        f"{data['alembic_noop_cpu_median_s']} s, ratio {data['ratio_noop_cpu_vs_alembic']}. "
        f"Goal (issue 21): no-op <= {goal}x plain Alembic: {met}. Load average at the end: "
        f"{data.get('loadavg_end', '?')}.",
        "",
    ]


def _clients(data: dict[str, Any]) -> list[str]:
    return [
        "## What `rolekit.client` costs per query (`client_overhead.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        *_table(
            ["stack", "rolekit p50 ms", "plain p50 ms", "ratio"],
            [
                [r["stack"], r["rolekit_p50_ms"], r["plain_p50_ms"], r["ratio"]]
                for r in data["stacks"]
            ],
        ),
        "",
        f"{data['method']}; {data['rounds_each']} rounds of {data['queries_per_round']} queries "
        f"each. Benchmark wall time: {data.get('bench_duration_s', '?')} s.",
        "",
    ]


def _soak(data: dict[str, Any]) -> list[str]:
    cfg, wall = data["config"], data["run_wall_time_s"]
    rows = [
        [s["name"], s["attempts"], s["failed_connections"] + s["failed_queries"], s["p50_ms"],
         s["p99_ms"], s.get("max_ms")]
        for s in data["scenarios"]
    ]  # fmt: skip
    return [
        "## Soak: back-to-back `rotate auto` runs under load (`soak.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        f"{cfg['runs']} runs of `rotate my_app auto --max-age 0 --apply --publish CMD` in a row "
        f"(quiet period {cfg['quiet_s']} s); the publish command writes the credentials file, "
        "the only thing the apps read: a pooled `rolekit.client` app (psycopg_pool, "
        f"`from_file`) and {cfg['laggard_workers']} laggard workers that connect per query and "
        "move only when the file changes. Results: "
        + ", ".join(f"{n} {k}" for k, n in data["runs"].items())
        + f"; wall time per run: median {wall['median']} s, max {wall['max']} s.",
        "",
        *_table(["scenario", "attempts", "failures", "p50 ms", "p99 ms", "max ms"], rows),
        "",
        f"**{data['failures_total']} failures in {data['attempts_total']:,} attempts.** "
        f"Benchmark wall time: {data.get('bench_duration_s', '?')} s.",
        "",
    ]


def _scale(data: dict[str, Any]) -> list[str]:
    fallback = {r["families"]: r for r in data.get("scrypt_fallback_rows", [])}
    rows = [
        [
            r["families"],
            r["secrets"],
            r["full_apply_s"],
            r["noop_s"],
            r["noop_round_trips"],
            r["full_apply_round_trips"],
            fallback.get(r["families"], {}).get("full_apply_s"),
            fallback.get(r["families"], {}).get("noop_s"),
            fallback.get(r["families"], {}).get("noop_round_trips"),
        ]
        for r in data["rows"]
    ]
    constant = "constant" if data["noop_round_trips_constant"] else "**NOT constant**"
    return [
        "## Scale with the number of role families (`scale.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        "One revision with N `op.create_role_family` calls; per family a `SetPasswords` (dev) "
        "and a `FamilyLogin` repeatable, a rotation state entry and two passwords. Left: the "
        "secrets file has a fingerprint key (keyed HMAC checksums; `gen-password --write` and "
        "`rotate begin` add one). Right: the same project without a key (scrypt fallback).",
        "",
        *_table(
            [
                "families",
                "secrets",
                "full apply s",
                "no-op s",
                "no-op round trips",
                "full-apply statements",
                "scrypt: full apply s",
                "scrypt: no-op s",
                "scrypt: no-op round trips",
            ],
            rows,
        ),
        "",
        f"No-op round trips (statements the server logged during the no-op run) are {constant} "
        "across sizes. Without a fingerprint key every secret's changelog checksum needs an "
        f"scrypt fingerprint ({data['scrypt_fingerprint_ms_per_secret']} ms each here), cached "
        "in-process only, so every `alembic` run pays it again: the scrypt no-op grows linearly "
        "with the number of secrets. Benchmark wall time: "
        f"{data.get('bench_duration_s', '?')} s.",
        "",
        *_example_plus(data.get("example_plus_families")),
    ]


def _example_plus(plus: dict[str, Any] | None) -> list[str]:
    """The example project plus N families against the example alone (same run)."""
    if not plus:
        return []
    n = plus["families_added"]

    def verdict(ratio: float, goal: float) -> str:
        return f"goal <= {goal}: {'met' if ratio <= goal else '**not met**'}"

    return [
        f"### The example project plus {n} families, against the example alone",
        "",
        *_table(
            ["", "example alone", f"example + {n} families", "ratio", "goal"],
            [
                [
                    f"no-op `upgrade head`, median s ({plus['noop_runs_each']} interleaved runs "
                    "each)",
                    plus["example_noop_s"],
                    plus["plus_noop_s"],
                    plus["ratio_noop"],
                    verdict(plus["ratio_noop"], plus["goal_ratio_noop"]),
                ],
                [
                    f"full apply from base, median s ({plus['apply_rounds_each']} fresh "
                    "clusters each)",
                    plus["example_full_apply_s"],
                    plus["plus_full_apply_s"],
                    plus["ratio_full_apply"],
                    verdict(plus["ratio_full_apply"], plus["goal_ratio_full_apply"]),
                ],
                [
                    "no-op as the least-privileged migrator, median s (every LOGIN member "
                    "logs in: it cannot read pg_authid)",
                    plus.get("least_privileged_example_noop_s", "-"),
                    plus.get("least_privileged_plus_noop_s", "-"),
                    plus.get("least_privileged_ratio_noop", "-"),
                    verdict(plus["least_privileged_ratio_noop"], plus["goal_ratio_noop"])
                    if "least_privileged_ratio_noop" in plus
                    else "-",
                ],
                [
                    "statements sent in the no-op",
                    plus["example_noop_statements"],
                    plus["plus_noop_statements"],
                    "",
                    "",
                ],
            ],
        ),
        "",
        f"Median of the pairwise no-op ratios: {plus['ratio_noop_pairwise_median']}. Whole "
        "`alembic` processes, as in a deploy; the ratios are against the example's own "
        "figures from the same run, so the machine's speed cancels out; the goals are issue "
        f"21's. Load average at the end: {plus.get('loadavg_end', '?')}.",
        "",
    ]


def _drain(data: dict[str, Any]) -> list[str]:
    cfg = data["config"]
    rows = []
    for s in data["scenarios"]:
        clients = s["clients"]
        after = clients.get("after_finish")
        finishes = "; ".join(
            f"{f['finish']} (exit {f['exit_code']}, {f['seconds']} s"
            + (f", {f['while']})" if f.get("while") else ")")
            for f in s["finishes"]
        )
        rows.append(
            [
                s["scenario"],
                s["what"],
                finishes,
                clients["attempts"],
                clients["failures"],
                f"{after['failures']} of {after['attempts']}" if after else "-",
            ]
        )
    poll, track = data["poll_cost"], data["tracking_cost"]
    return [
        "## The drain against the whole deployment (`drain.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        f"Quiet period {cfg['quiet_s']} s; finishes expected to refuse use a drain timeout of "
        f"{cfg['refuse_timeout_s']} s. Baselines are the drain before it watched the whole "
        "deployment (one look, primary only); their clients keep connecting after `finish` "
        "passed, and the last column counts what failed then.",
        "",
        *_table(
            [
                "scenario",
                "clients",
                "finish",
                "client attempts",
                "client failures",
                "failures after a passed finish",
            ],
            rows,
        ),
        "",
        f"**Client failures where rolekit reported success: "
        f"{data['failures_where_rolekit_succeeded']}.**",
        "",
        "The drain's poll: one prepared query (`pg_stat_get_activity()`) per host every "
        f"10 ms, {poll['backends_in_pg_stat_activity']} backends on the server, beside the same "
        "poll through the `pg_stat_activity` view. Server CPU is the polling backend's "
        f"(`/proc`); an idle backend used {poll['idle_backend_cpu_ms_per_second']} ms/s.",
        "",
        *_table(
            [
                "poll",
                "polls/s",
                "p50 ms",
                "p99 ms",
                "server CPU ms/s",
                "% of a core",
                "µs per poll",
            ],
            [
                [
                    name,
                    p["polls_per_second"],
                    p["poll_latency_ms_p50"],
                    p["poll_latency_ms_p99"],
                    p["server_cpu_ms_per_second"],
                    p["server_cpu_share_of_one_core_pct"],
                    p["server_cpu_us_per_poll"],
                ]
                for name, p in (
                    ("rolekit's drain (prepared)", poll["drain_poll"]),
                    ("pg_stat_activity view", poll["view_poll"]),
                )
            ],
        ),
        "",
        f"Login latency with the tracking trigger (PostgreSQL {track['postgresql_major']}, "
        f"{track['samples_each']} SCRAM logins each, in alternating rounds):",
        "",
        *_table(
            ["", "p50 ms", "p99 ms", "ratio to no trigger (p50)"],
            [
                [
                    label,
                    track[f"login_ms_p50_{key}"],
                    track[f"login_ms_p99_{key}"],
                    track[f"ratio_{key}"],
                ]
                for label, key in (
                    ("trigger disabled", "without"),
                    ("trigger, role not leaving", "other"),
                    ("trigger, leaving member", "leaving"),
                )
            ],
        ),
        "",
        f"Benchmark wall time: {data.get('bench_duration_s', '?')} s.",
        "",
    ]


def _fleet(data: dict[str, Any]) -> list[str]:
    cfg, med, runs, ratio = data["config"], data["median_s"], data["runs_s"], data["ratio_vs_one"]
    failed = sum(data["app_failed_logins"].values())
    attempts = sum(data["app_attempts"].values())
    return [
        "## Many families at once (`fleet.json`)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        f"{cfg['families']} families (the example's `my_app` and seven added ones), each with "
        f"an application connecting every {cfg['app_interval_s']} s with the credentials "
        "`rolekit.client` hands out. Each round runs, in turn: `rotate my_app auto` alone "
        f"(one); {cfg['families']} `rotate FAMILY auto` processes started at once (parallel); "
        f"one `rotate --all auto` (all); quiet period {cfg['quiet_period_s']} s, "
        f"{cfg['rounds']} rounds. One after another, {cfg['families']} rotations would take "
        f"{cfg['families']} times one; the goal is at most 2.5 times.",
        "",
        *_table(
            ["scenario", "families", "median s", "runs s", "ratio to one"],
            [
                ["one", 1, med["one"], ", ".join(map(_fmt, runs["one"])), 1.0],
                [
                    "parallel",
                    cfg["families"],
                    med["parallel"],
                    ", ".join(map(_fmt, runs["parallel"])),
                    ratio["parallel"],
                ],
                [
                    "all",
                    cfg["families"],
                    med["all"],
                    ", ".join(map(_fmt, runs["all"])),
                    ratio["all"],
                ],
            ],
        ),
        "",
        f"**Failed logins of the applications: {failed}** of {attempts:,} attempts, "
        "through every rotation of every scenario.",
        "",
    ]


def write() -> Path:
    lines = [
        "# rolekit benchmarks",
        "",
        "Generated by `python -m bench` (`make bench`); raw numbers in the JSON files beside "
        "this one. Benchmarks, not tests: nothing here asserts timings.",
        "",
    ]
    sections = (
        ("rotation_under_load.json", _rotation),
        ("upgrade_overhead.json", _overhead),
        ("sops_overhead.json", sops_overhead.summary),
        ("client_overhead.json", _clients),
        ("scale.json", _scale),
        ("fleet.json", _fleet),
        ("drain.json", _drain),
        ("soak.json", _soak),
    )
    for name, render in sections:
        data = _load(name)
        if data is not None:
            lines += render(data)
    path = RESULTS / "SUMMARY.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    log(f"wrote {path}")
    return path
