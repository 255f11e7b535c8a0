"""``rotation_timeline.png``: the rolekit phase of the rotation benchmark, second by second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import MEMBERS, REPO, log

_EVENT_STYLE = {
    "begin": ("tab:blue", "--"),
    "app switch": ("tab:green", ":"),
    "finish": ("tab:red", "-."),
}


def timeline(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phase = data["phases"]["rolekit"]
    scenarios = {s["name"]: s for s in data["scenarios"] if s.get("phase") == "rolekit"}
    direct = scenarios["rolekit-direct"]
    fig, (ax_sess, ax_rate, ax_fail) = plt.subplots(
        3, 1, figsize=(14, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.4]}
    )
    samples = phase["session_samples"]
    ts = [s["t"] for s in samples]
    for member, color in zip(MEMBERS, ("tab:orange", "tab:purple"), strict=True):
        ax_sess.step(
            ts,
            [s["sessions"].get(member, 0) for s in samples],
            where="post",
            label=member,
            color=color,
            linewidth=1.4,
        )
    ax_sess.set_ylabel("live sessions\n(pg_stat_activity, 0.25 s)")
    ax_sess.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    ax_sess.set_title(
        "rolekit rotation under load: all apps (direct x{}, pooled client, 2 PgBouncers); "
        "lag {:.1f} s".format(direct.get("workers"), data["config"]["lag_s"]),
        fontsize=10,
    )

    for name, color in (
        ("rolekit-direct", "tab:blue"),
        ("rolekit-pgbouncer", "tab:brown"),
        ("rolekit-pgbouncer-auth-query", "tab:olive"),
        ("rolekit-client-pooled", "tab:gray"),
    ):
        if name not in scenarios:
            continue
        rows = scenarios[name]["timeline"]
        label = name + (" (queries/s)" if "pooled" in name else " (connects/s)")
        ax_rate.step(
            [r["t"] for r in rows],
            [r["ok"] for r in rows],
            where="post",
            label=label,
            color=color,
            linewidth=1.2,
        )
    ax_rate.set_ylabel("successes per s")
    ax_rate.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    ax_rate.set_ylim(bottom=0)

    total_failed = 0
    for name, color in (
        ("rolekit-direct", "tab:red"),
        ("rolekit-pgbouncer", "tab:pink"),
        ("rolekit-pgbouncer-auth-query", "tab:olive"),
        ("rolekit-client-pooled", "black"),
    ):
        if name not in scenarios:
            continue
        rows = scenarios[name]["timeline"]
        total_failed += sum(r["failed"] for r in rows)
        ax_fail.step(
            [r["t"] for r in rows],
            [r["failed"] for r in rows],
            where="post",
            label=name,
            color=color,
            linewidth=1.2,
        )
    ax_fail.set_ylabel("failures per s")
    ax_fail.set_ylim(bottom=0, top=max(1, ax_fail.get_ylim()[1]))
    ax_fail.set_xlabel("seconds since the load started")
    note = f"total failures: {total_failed}"
    ax_fail.text(
        0.01,
        0.8,
        note,
        transform=ax_fail.transAxes,
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"},
    )
    ax_fail.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)

    top = ax_sess.get_ylim()[1]
    for event in phase["events"]:
        color, style = _EVENT_STYLE.get(event["name"], ("black", "-"))
        for ax in (ax_sess, ax_rate, ax_fail):
            ax.axvline(event["t"], color=color, linestyle=style, linewidth=1)
        ax_sess.text(
            event["t"],
            top,
            f" {event['name']} {event.get('rotation', '')}",
            rotation=90,
            va="top",
            ha="left",
            fontsize=7,
            color=color,
        )
    for start, end in phase["rotation_windows_s"]:
        for ax in (ax_sess, ax_rate, ax_fail):
            ax.axvspan(start, end, color="tab:blue", alpha=0.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path
