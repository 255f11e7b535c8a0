"""A no-op ``alembic upgrade head`` with a SOPS secrets file vs the plain dotenv file.

Two copies of the example project on the same database, at head, with the
same prod passwords and fingerprint key: one reads them from ``passwords.env``,
the other from ``passwords.prod.sops.env`` (age key, made here), decrypted by
the ``sops`` executable (a Go process) on each run.  Runs are fresh ``alembic``
subprocesses, interleaved in alternating order.  The goal (issue 22): the SOPS
no-op within 1.3x of the dotenv one.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import example, log, machine, median, rounded, write_json
from bench.overhead import ROLEKIT
from rolekit.secrets import _sops
from rolekit.secrets._dotenv import Errors
from rolekit.testing import Cluster, Project

RUNS = 21
SOPS_NAME = "passwords.prod.sops.env"


def _ini(root: Path, old: str, new: str) -> None:
    """Point ``secrets.prod`` of the project at *root* from *old* to *new*."""
    ini = root / "alembic.ini"
    text = ini.read_text()
    if f"secrets.prod = {old}\n" not in text:
        raise RuntimeError(f"{ini} has no 'secrets.prod = {old}'")
    ini.write_text(text.replace(f"secrets.prod = {old}\n", f"secrets.prod = {new}\n"))


def _sops_copy(plain: Project, root: Path, key: Path) -> Project:
    """*plain*'s project with its passwords in a SOPS file (and no passwords.env)."""
    shutil.copytree(plain.root, root, ignore=shutil.ignore_patterns("*.lock", "__pycache__"))
    sops = _sops.executable(Errors(root / SOPS_NAME, None))
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    plaintext = (root / "passwords.env").read_bytes()
    encrypted = subprocess.run(
        [sops, "encrypt", "--age", recipient, "--input-type", "dotenv", "--output-type",
         "dotenv", "--filename-override", SOPS_NAME],
        input=plaintext, capture_output=True, check=True, cwd=root,
    ).stdout  # fmt: skip
    (root / SOPS_NAME).write_bytes(encrypted)
    (root / "passwords.env").unlink()
    _ini(root, "passwords.env", SOPS_NAME)
    return Project(root, plain.cluster, env={"SOPS_AGE_KEY_FILE": str(key)})


def _sops_starts(project: Project, folder: Path) -> int:
    """How many times one no-op starts sops (through a counting wrapper)."""
    calls = folder / "sops-calls.log"
    wrapper = folder / "counting-sops"
    real = _sops.executable(Errors(project.root / SOPS_NAME, None))
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o700)
    project.upgrade("prod", ROLEKIT_SOPS=str(wrapper))
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def _decrypt_times(project: Project, runs: int) -> list[float]:
    """Wall times of ``sops decrypt`` of the project's file alone: what one no-op adds."""
    sops = _sops.executable(Errors(project.root / SOPS_NAME, None))
    cmd = [sops, "decrypt", "--input-type", "dotenv", "--output-type", "dotenv", SOPS_NAME]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, cwd=project.root, env=project.env(), capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def run(major: int | None = None, runs: int = RUNS) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-sops-"))
    bench_started = time.monotonic()
    key = work / "age-key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    with Cluster(major) as cluster:
        log(f"sops: {cluster!r}")
        info = machine(cluster)
        plain = example(work / "dotenv", cluster, contexts=("prod",))
        _ini(plain.root, "passwords.prod.env.age", "passwords.env")
        plain.upgrade("prod")
        sops = _sops_copy(plain, work / "sops", key)
        # bytecode for both, as an installed package and a deployed project have
        for folder in (ROLEKIT, plain.root, sops.root):
            compileall.compile_dir(folder, quiet=1)

        def noop(project: Project) -> None:
            proc = project.upgrade("prod")
            if "] running " in proc.stderr:
                raise RuntimeError(f"the no-op ran something:\n{proc.stderr}")

        for project in (plain, sops):  # untimed: imports cached by the OS
            noop(project)
        starts = _sops_starts(sops, work)
        decrypts = _decrypt_times(sops, runs)
        times: dict[str, list[float]] = {"dotenv": [], "sops": []}
        pairs = [("dotenv", plain), ("sops", sops)]
        for i in range(runs):
            for name, project in pairs if i % 2 == 0 else pairs[::-1]:
                started = time.perf_counter()
                noop(project)
                times[name].append(time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)
    med_dotenv = median(times["dotenv"]) or 1e-9
    med_sops = median(times["sops"]) or 0.0
    log(f"sops: no-op medians sops {med_sops:.3f}s, dotenv {med_dotenv:.3f}s")
    data: dict[str, Any] = {
        "machine": info,
        "runs_each": runs,
        "ratio_sops_vs_dotenv": rounded(med_sops / med_dotenv, 3),
        "sops_noop_median_s": rounded(med_sops, 4),
        "dotenv_noop_median_s": rounded(med_dotenv, 4),
        "sops_starts_per_noop": starts,
        "sops_decrypt_median_s": rounded(median(decrypts), 4),
        "sops_noop_runs_s": [rounded(t, 4) for t in times["sops"]],
        "dotenv_noop_runs_s": [rounded(t, 4) for t in times["dotenv"]],
        "method": (
            "wall time of `python -m alembic -x context=prod upgrade head` subprocesses, two "
            "copies of the example project at head on one database with the same prod "
            "passwords, one in passwords.env, one in a SOPS dotenv file (age key, sops from "
            "the rolekit[sops] extra), interleaved in alternating order"
        ),
        "python": sys.version.split()[0],
        "bench_duration_s": round(time.monotonic() - bench_started, 1),
    }
    write_json("sops_overhead.json", data)
    return data


def summary(data: dict[str, Any]) -> list[str]:
    """This benchmark's section of SUMMARY.md."""
    return [
        "## No-op upgrade with a SOPS secrets file (`sops_overhead.json`)",
        "",
        f"**ratio_sops_vs_dotenv = {data['ratio_sops_vs_dotenv']}** (goal: at most 1.3): "
        f"median no-op {data['sops_noop_median_s']} s with `passwords.prod.sops.env`, "
        f"{data['dotenv_noop_median_s']} s with `passwords.env`; sops started "
        f"{data['sops_starts_per_noop']} time(s) per no-op, and one `sops decrypt` of the "
        f"file alone takes {data['sops_decrypt_median_s']} s (median); {data['runs_each']} "
        f"interleaved runs each, load average at start "
        f"{data['machine'].get('loadavg_start', '-')}. Method: {data['method']}. Benchmark "
        f"wall time: {data.get('bench_duration_s', '?')} s.",
        "",
    ]
