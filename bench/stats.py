"""Turning attempt records and catalog samples into the numbers the JSON holds."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from bench.common import percentile, rounded
from bench.load import CONNECT_FAILED, OK, QUERY_FAILED
from rolekit.testing import Cluster

Record = tuple[float, float, int, str]
Window = tuple[float, float]


def _inside(t: float, windows: Sequence[Window]) -> bool:
    return any(start <= t <= end for start, end in windows)


def summarize(
    name: str,
    records: Sequence[Record],
    errors: Counter[str],
    *,
    started: float,
    ended: float,
    windows: Sequence[Window],
    latency_of: str = "connect",
) -> dict[str, Any]:
    """The scenario's counts, rates and latency percentiles.

    Latencies are those of successful attempts (a refused login returns fast
    and would flatter the percentiles); *windows* are the rotation windows,
    everything else is steady state.
    """
    ok = [r for r in records if r[2] == OK]
    failed = [r for r in records if r[2] != OK]
    lat_all = [r[1] for r in ok]
    lat_rot = [r[1] for r in ok if _inside(r[0], windows)]
    lat_steady = [r[1] for r in ok if not _inside(r[0], windows)]
    duration = max(ended - started, 1e-9)
    users = Counter(r[3] for r in ok)
    first_fail = min((r[0] for r in failed), default=None)
    bursts = failure_bursts(failed, started)
    return {
        "name": name,
        "latency_of": latency_of,
        "attempts": len(records),
        "succeeded": len(ok),
        "failed_connections": sum(1 for r in records if r[2] == CONNECT_FAILED),
        "failed_queries": sum(1 for r in records if r[2] == QUERY_FAILED),
        "duration_s": rounded(duration),
        "connects_per_s": rounded(len(ok) / duration, 1),
        "attempts_per_s": rounded(len(records) / duration, 1),
        "p50_ms": rounded(percentile(lat_all, 50)),
        "p99_ms": rounded(percentile(lat_all, 99)),
        "steady_p50_ms": rounded(percentile(lat_steady, 50)),
        "steady_p99_ms": rounded(percentile(lat_steady, 99)),
        "rotation_p50_ms": rounded(percentile(lat_rot, 50)),
        "rotation_p99_ms": rounded(percentile(lat_rot, 99)),
        "max_ms": rounded(max(lat_all, default=None)),
        "rotation_attempts": sum(1 for r in records if _inside(r[0], windows)),
        # the longest burst of failures (failures less than 2 s apart): the outage an app sees
        "failure_window_s": max((b["duration_s"] for b in bursts), default=None),
        "first_failure_at_s": rounded(first_fail - started, 3) if first_fail is not None else None,
        "failure_bursts": bursts,
        "succeeded_by_user": dict(sorted(users.items())),
        "failed_by_user": dict(sorted(Counter(r[3] for r in failed).items())),
        "errors": dict(errors.most_common(10)),
    }


def failure_bursts(
    failed: Sequence[Record], started: float, gap: float = 2.0
) -> list[dict[str, Any]]:
    """Group failed attempts into bursts separated by more than *gap* seconds."""
    groups: list[list[Record]] = []
    for record in sorted(failed):
        if groups and record[0] - groups[-1][-1][0] <= gap:
            groups[-1].append(record)
        else:
            groups.append([record])
    return [
        {
            "at_s": rounded(g[0][0] - started, 3),
            "duration_s": rounded(g[-1][0] - g[0][0], 3),
            "failures": len(g),
            "users": dict(Counter(r[3] for r in g)),
        }
        for g in groups
    ]


def per_second(records: Sequence[Record], started: float, ended: float) -> list[dict[str, Any]]:
    """Attempts, successes and failures in each second since *started*."""
    seconds = int(ended - started) + 1
    ok = [0] * seconds
    bad = [0] * seconds
    for t, _ms, status, _user in records:
        i = int(t - started)
        if 0 <= i < seconds:
            if status == OK:
                ok[i] += 1
            else:
                bad[i] += 1
    return [{"t": i, "ok": ok[i], "failed": bad[i]} for i in range(seconds)]


class SessionSampler(threading.Thread):
    """Counts live client sessions per member (and per application) every *interval* s."""

    def __init__(self, cluster: Cluster, users: Sequence[str], interval: float = 0.25) -> None:
        super().__init__(daemon=True, name="session-sampler")
        self.cluster = cluster
        self.users = list(users)
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            conn = self.cluster.connect(application_name="bench-sampler")
        except Exception as exc:  # recorded, not fatal: the load numbers still stand
            self.error = str(exc)
            return
        try:
            with conn.cursor() as cur:
                while not self._halt.is_set():
                    t = time.time()
                    cur.execute(
                        "SELECT usename::text, coalesce(application_name, ''), count(*)"
                        " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                        " AND usename = ANY(%s) GROUP BY 1, 2",
                        (self.users,),
                    )
                    by_user: dict[str, int] = dict.fromkeys(self.users, 0)
                    by_app: dict[str, int] = {}
                    for user, app, n in cur.fetchall():
                        by_user[user] += int(n)
                        by_app[f"{user}/{app or '?'}"] = int(n)
                    self.samples.append({"t": t, "sessions": by_user, "by_app": by_app})
                    self._halt.wait(max(0.0, self.interval - (time.time() - t)))
        except Exception as exc:
            self.error = str(exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def per_second(self, started: float, ended: float) -> list[dict[str, Any]]:
        """The largest count seen in each second, per member."""
        seconds = int(ended - started) + 1
        peak: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(self.users, 0))
        for sample in self.samples:
            i = int(sample["t"] - started)
            if 0 <= i < seconds:
                for user, n in sample["sessions"].items():
                    peak[i][user] = max(peak[i][user], n)
        return [{"t": i, "sessions": peak[i]} for i in range(seconds)]
