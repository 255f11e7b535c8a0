"""Helpers shared by the benchmarks: machine facts, projects, subprocesses, stats."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rolekit.sandbox import Cluster
from rolekit.secrets import SecretsFile, generate_password

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


class Project:
    """A copy of a project folder (alembic.ini, migrations/) driven by subprocesses."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    @classmethod
    def example(cls, root: Path, url: str, contexts: Sequence[str] = ("dev",)) -> Project:
        """Copy the repository's example project and give its members passwords."""
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
        shutil.copytree(
            REPO / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
        )
        secrets = SecretsFile(root / "passwords.env")
        for context in contexts:
            for role in MEMBERS:
                secrets.set(role, context, generate_password())
        # as `rolekit gen-password --write` does: fast keyed checksums, not scrypt
        secrets.ensure_fingerprint_key()
        return cls(root, url)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ROLEKIT_CONTEXT", "DATABASE_URL")}
        env["DATABASE_URL"] = self.url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        return env

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd,
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def alembic(
        self, *args: str, context: str | None = "dev", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        xs = ["-x", f"context={context}"] if context else []
        return self.run(sys.executable, "-m", "alembic", *xs, *args, check=check)

    def rolekit(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "rolekit.cli", *args, check=check)

    def creds(self, family: str = "my_app", context: str = "dev") -> tuple[str, str]:
        """``rolekit creds FAMILY --context CONTEXT --json``.

        The CLI's ``main()`` runs in-process: a subprocess would spend a second
        or more starting Python on a loaded machine, and that would stretch the
        application lag the rotation benchmark holds constant.
        """
        from rolekit import cli

        out = io.StringIO()
        args = [
            "creds",
            family,
            "--context",
            context,
            "--json",
            "-c",
            str(self.root / "alembic.ini"),
        ]
        with contextlib.redirect_stdout(out):
            code = cli.main(args)
        if code != 0:
            raise RuntimeError(f"rolekit {' '.join(args)} exited {code}")
        data = json.loads(out.getvalue())
        return str(data["user"]), str(data["password"])

    def password(self, role: str, context: str = "dev") -> str:
        return SecretsFile(self.root / "passwords.env").get(role, context).reveal()


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args, **kw)
    return time.perf_counter() - started, result
