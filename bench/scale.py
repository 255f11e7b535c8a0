"""How upgrades scale with the number of role families.

For N families, a generated project holds one revision with N
``op.create_role_family`` calls, and per family a ``SetPasswords`` (context
dev) and a ``FamilyLogin`` repeatable, a rotation state entry and two
passwords.  Each N gets a fresh cluster logging every statement; the no-op
run's statements are counted from the server log: they should not grow with N.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, log, machine, median, rounded, write_json
from bench.overhead import count_statements
from rolekit.secrets import Secret, SecretsFile, fingerprint, generate_password
from rolekit.testing import Cluster, Project

SIZES = (1, 10, 100, 500)

_REVISION = '''\
"""{n} role families.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
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
    (migrations / "versions" / "0001_families.py").write_text(_REVISION.format(n=n, families=names))
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
    rows = [measure(n, major, work, noop_runs=3) for n in sizes]
    fallback = [measure(n, major, work, noop_runs=1, keyed=False) for n in fallback_sizes]
    trips = [r["noop_round_trips"] for r in rows + fallback]
    data = {
        "machine": info,
        "rows": rows,
        "noop_round_trips_constant": len(set(trips)) == 1,
        "scrypt_fallback_rows": fallback,
        "scrypt_fingerprint_ms_per_secret": rounded(median(per_secret), 1),
        "method": (
            "fresh cluster per size with log_statement=all; full_apply_s = `alembic -x context=dev "
            "upgrade head` from base (subprocess); noop_s = the same at head (median of 3 runs); "
            "noop_round_trips = `LOG:  statement:` lines the server logged during the first "
            "no-op run. rows: the secrets file has a fingerprint key (keyed HMAC checksums, what "
            "`rolekit gen-password --write` and `rotate begin` set up); scrypt_fallback_rows: "
            "the same without a key, so every secret costs an scrypt fingerprint per run "
            "(one no-op run each)"
        ),
    }
    shutil.rmtree(work, ignore_errors=True)
    data["bench_duration_s"] = round(time.monotonic() - bench_started, 1)
    write_json("scale.json", data)
    return data
