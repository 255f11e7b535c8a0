"""How upgrades scale with the number of role families.

For N families, a generated project holds one revision with N
``op.create_role_family`` calls, and per family a ``SetPasswords`` (context
dev) and a ``FamilyLogin`` repeatable, a rotation state entry and two
passwords.  Each N gets a fresh cluster logging every statement; the no-op
run's statements are counted from the server log: they should not grow with N.

The example project plus 200 such families is timed against the example
project alone, in the same run: the no-op as interleaved whole ``alembic``
processes (median of 11 each), the full apply on fresh clusters (5 each), alternating.
The goals of issue 21: no-op at most 1.5x, full apply at most 8x.
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, example, log, machine, median, rounded, timed, write_json
from bench.overhead import ROLEKIT, count_statements
from rolekit.secrets import Secret, SecretsFile, fingerprint, generate_password
from rolekit.testing import Cluster, Project

SIZES = (1, 10, 100, 500)
#: families added to the example project for the ratios against it alone
EXAMPLE_PLUS = 200
#: interleaved no-op runs of each project, and fresh-cluster applies of each
RATIO_RUNS = 11
APPLY_ROUNDS = 5
#: the goals of issue 21 (reported, never asserted)
GOAL_NOOP_RATIO = 1.5
GOAL_APPLY_RATIO = 8.0

_REVISION = '''\
"""{n} role families.

Revision ID: {revision}
Revises: {down}
"""

from alembic import op

revision = "{revision}"
down_revision = {down_revision}
branch_labels = None
depends_on = None

FAMILIES = {families!r}


def upgrade() -> None:
    for group in FAMILIES:
        op.create_role_family(group, [f"{{group}}_tom", f"{{group}}_jerry"])


def downgrade() -> None:
    for group in reversed(FAMILIES):
        op.drop_role_family(group, [f"{{group}}_tom", f"{{group}}_jerry"])
'''

_REPEATABLES = '''\
"""Per family: passwords (dev) and the login state."""

from rolekit.repeatable import FamilyLogin, SetPasswords

FAMILIES = {families!r}

REPEATABLES = []
for group in FAMILIES:
    members = [f"{{group}}_tom", f"{{group}}_jerry"]
    REPEATABLES.append(SetPasswords(f"set_passwords_{{group}}", members, context="dev"))
    REPEATABLES.append(FamilyLogin(f"allow_login_for_{{group}}", group, members))
'''


def families(n: int) -> list[str]:
    return [f"fam{i:04d}" for i in range(n)]


def generate(root: Path, n: int, cluster: Cluster, *, keyed: bool = True) -> Project:
    names = families(n)
    migrations = root / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "repeatable").mkdir()
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    shutil.copy(REPO / "migrations" / "env.py", migrations / "env.py")
    (migrations / "versions" / "0001_families.py").write_text(
        _REVISION.format(n=n, families=names, revision="0001", down="", down_revision=None)
    )
    (migrations / "repeatable" / "families.py").write_text(_REPEATABLES.format(families=names))
    state = {"version": 1, "families": {g: {"dev": {"login": [f"{g}_tom"]}} for g in names}}
    (migrations / "rotation.json").write_text(json.dumps(state, indent=1))
    # 2N passwords: written as one dotenv file (SecretsFile.set per key would rewrite it 2N times)
    lines = [
        f"{g}_{m}.password.dev={generate_password()}\n" for g in names for m in ("tom", "jerry")
    ]
    fd = os.open(root / "passwords.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(lines)
    if keyed:  # what `rolekit gen-password --write` and `rotate begin` add
        SecretsFile(root / "passwords.env").ensure_fingerprint_key()
    return Project(root, cluster)


def add_families(project: Project, n: int) -> None:
    """Add *n* generated families to a copy of the example project: a revision
    after its head, a repeatables file, state entries and passwords."""
    names = families(n)
    migrations = project.root / "migrations"
    heads = sorted(p.stem.split("_")[0] for p in (migrations / "versions").glob("*.py"))
    (migrations / "versions" / "9001_families.py").write_text(
        _REVISION.format(
            n=n, families=names, revision="9001", down=heads[-1], down_revision=repr(heads[-1])
        )
    )
    (migrations / "repeatable" / "families.py").write_text(_REPEATABLES.format(families=names))
    state = json.loads((migrations / "rotation.json").read_text())
    for g in names:
        state["families"][g] = {"dev": {"login": [f"{g}_tom"]}}
        state.setdefault("members", {})[g] = [f"{g}_tom", f"{g}_jerry"]
    (migrations / "rotation.json").write_text(json.dumps(state, indent=1))
    with open(project.root / "passwords.env", "a") as file:
        file.writelines(
            f"{g}_{m}.password.dev={generate_password()}\n" for g in names for m in ("tom", "jerry")
        )


def _project(root: Path, cluster: Cluster, n: int, *, least_privileged: bool = False) -> Project:
    user, password = cluster.create_migrator() if least_privileged else (None, None)
    project = example(root, cluster, user=user, password=password)
    if n:
        add_families(project, n)
    compileall.compile_dir(project.root, quiet=1)
    return project


def _timed_upgrade(project: Project) -> float:
    return timed(project.upgrade, "dev")[0]  # upgrade() raises if it fails


def _noops(
    major: int | None, work: Path, n: int, runs: int, *, least_privileged: bool = False
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Interleaved no-op upgrades of the example alone and of the example plus *n*
    families, each project on a live cluster of its own, and the statements of one
    untimed no-op of each."""
    noops: dict[str, list[float]] = {"example": [], "plus": []}
    statements: dict[str, int] = {}
    with Cluster(major) as alone, Cluster(major) as crowded:
        projects = {
            "example": _project(work / "noop-example", alone, 0, least_privileged=least_privileged),
            "plus": _project(work / "noop-plus", crowded, n, least_privileged=least_privileged),
        }
        for which, project in projects.items():
            project.upgrade("dev")  # the apply; then one untimed no-op, its statements counted
            offset = project.cluster.log_size()
            proc = project.upgrade("dev")
            if "] running " in proc.stderr:
                raise RuntimeError(f"the {which} no-op ran something:\n{proc.stderr[-3000:]}")
            statements[which] = count_statements(project.cluster.log_since(offset))
        for i in range(runs):
            for which in ("example", "plus") if i % 2 == 0 else ("plus", "example"):
                noops[which].append(_timed_upgrade(projects[which]))
    return noops, statements


def example_plus(
    major: int | None,
    work: Path,
    n: int = EXAMPLE_PLUS,
    runs: int = RATIO_RUNS,
    rounds: int = APPLY_ROUNDS,
) -> dict[str, Any]:
    """The example project plus *n* families against the example alone, same run."""
    compileall.compile_dir(ROLEKIT, quiet=1)  # as an installed package has it
    applies: dict[str, list[float]] = {"example": [], "plus": []}
    for i in range(rounds):
        order = ("example", "plus") if i % 2 == 0 else ("plus", "example")
        for which in order:
            with Cluster(major) as cluster:
                project = _project(
                    work / f"apply-{which}-{i}", cluster, n if which == "plus" else 0
                )
                applies[which].append(_timed_upgrade(project))
    noops, statements = _noops(major, work, n, runs)
    # The least-privileged migrator cannot read pg_authid, so every LOGIN member
    # logs in to prove its password on every run: reported beside, against the
    # same goal.
    lp_noops, _ = _noops(major, work / "least-privileged", n, runs, least_privileged=True)
    pairs = [p / e for p, e in zip(noops["plus"], noops["example"], strict=True)]
    noop_ratio = (median(noops["plus"]) or 0.0) / (median(noops["example"]) or 1e-9)
    lp_ratio = (median(lp_noops["plus"]) or 0.0) / (median(lp_noops["example"]) or 1e-9)
    apply_ratio = (median(applies["plus"]) or 0.0) / (median(applies["example"]) or 1e-9)
    result = {
        "families_added": n,
        "noop_runs_each": runs,
        "apply_rounds_each": rounds,
        "example_noop_s": rounded(median(noops["example"]), 3),
        "plus_noop_s": rounded(median(noops["plus"]), 3),
        "ratio_noop": rounded(noop_ratio, 3),
        "ratio_noop_pairwise_median": rounded(median(pairs), 3),
        "least_privileged_example_noop_s": rounded(median(lp_noops["example"]), 3),
        "least_privileged_plus_noop_s": rounded(median(lp_noops["plus"]), 3),
        "least_privileged_ratio_noop": rounded(lp_ratio, 3),
        "example_full_apply_s": rounded(median(applies["example"]), 3),
        "plus_full_apply_s": rounded(median(applies["plus"]), 3),
        "ratio_full_apply": rounded(apply_ratio, 3),
        "goal_ratio_noop": GOAL_NOOP_RATIO,
        "goal_ratio_full_apply": GOAL_APPLY_RATIO,
        "example_noop_statements": statements["example"],
        "plus_noop_statements": statements["plus"],
        "example_noop_runs_s": [rounded(t, 3) for t in noops["example"]],
        "plus_noop_runs_s": [rounded(t, 3) for t in noops["plus"]],
        "example_full_apply_runs_s": [rounded(t, 3) for t in applies["example"]],
        "plus_full_apply_runs_s": [rounded(t, 3) for t in applies["plus"]],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    log(f"scale: example + {n} families vs the example alone: {result}")
    return result


def scrypt_ms() -> float:
    secret = Secret(generate_password())
    started = time.perf_counter()
    fingerprint(secret, salt=os.urandom(16), label="bench.password.dev")
    return (time.perf_counter() - started) * 1000


def measure(
    n: int, major: int | None, work: Path, noop_runs: int, *, keyed: bool = True
) -> dict[str, Any]:
    with Cluster(major) as cluster:
        project = generate(work / f"n{n}-{'hmac' if keyed else 'scrypt'}", n, cluster, keyed=keyed)
        offset = cluster.log_size()
        started = time.perf_counter()
        project.upgrade("dev")
        full_apply_s = time.perf_counter() - started
        full_statements = count_statements(cluster.log_since(offset))
        times, trips = [], []
        for _ in range(noop_runs):
            offset = cluster.log_size()
            started = time.perf_counter()
            proc = project.upgrade("dev")
            times.append(time.perf_counter() - started)
            trips.append(count_statements(cluster.log_since(offset)))
            if "] running " in proc.stderr:
                raise RuntimeError(
                    f"the no-op upgrade with {n} families ran something:\n{proc.stderr[-3000:]}"
                )
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'fam%%' AND rolcanlogin")
            row = cur.fetchone()
        row_out = {
            "families": n,
            "secrets": 2 * n,
            "full_apply_s": rounded(full_apply_s, 3),
            "noop_s": rounded(median(times), 3),
            "noop_round_trips": trips[0],
            "noop_runs_s": [rounded(t, 3) for t in times],
            "noop_round_trips_all_runs": trips,
            "full_apply_round_trips": full_statements,
            "login_members_after": int(row[0]) if row else None,
        }
        log(f"scale ({'keyed HMAC' if keyed else 'scrypt fallback'}): {row_out}")
        return row_out


def run(
    major: int | None = None,
    sizes: tuple[int, ...] = SIZES,
    fallback_sizes: tuple[int, ...] = SIZES,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-scale-"))
    bench_started = time.monotonic()
    with Cluster(major) as probe:
        info = machine(probe)
    per_secret = [scrypt_ms() for _ in range(5)]
    plus = example_plus(major, work)
    rows = [measure(n, major, work, noop_runs=3) for n in sizes]
    fallback = [measure(n, major, work, noop_runs=1, keyed=False) for n in fallback_sizes]
    trips = [r["noop_round_trips"] for r in rows + fallback]
    data = {
        "machine": info,
        "rows": rows,
        "noop_round_trips_constant": len(set(trips)) == 1,
        "scrypt_fallback_rows": fallback,
        "scrypt_fingerprint_ms_per_secret": rounded(median(per_secret), 1),
        "example_plus_families": plus,
        "method": (
            "fresh cluster per size with log_statement=all; full_apply_s = `alembic -x context=dev "
            "upgrade head` from base (subprocess); noop_s = the same at head (median of 3 runs); "
            "noop_round_trips = `LOG:  statement:` lines the server logged during the first "
            "no-op run. rows: the secrets file has a fingerprint key (keyed HMAC checksums, what "
            "`rolekit gen-password --write` and `rotate begin` set up); scrypt_fallback_rows: "
            "the same without a key, so every secret costs an scrypt fingerprint per run "
            "(one no-op run each). example_plus_families: the example project (copied as "
            "bench.common.example does) plus N generated families in a revision after its head, "
            "against the example alone: no-op = interleaved `alembic -x context=dev upgrade "
            "head` subprocesses at head on two live clusters (median of each, and the median "
            "of the pairwise ratios); full apply = the upgrade from base, each on a fresh "
            "cluster, the two alternating; bytecode compiled first, as installed"
        ),
    }
    shutil.rmtree(work, ignore_errors=True)
    data["bench_duration_s"] = round(time.monotonic() - bench_started, 1)
    write_json("scale.json", data)
    return data
