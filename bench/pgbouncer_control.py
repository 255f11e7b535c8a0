"""Control experiment for the auth_query PgBouncer failures (not part of ``python -m bench``).

``python -m bench.pgbouncer_control`` rotates the two members by hand, with
plain SQL and no rolekit, through a PgBouncer that authenticates with
``auth_query`` (SCRAM pass-through), under load, twice:

* ``keep`` -- the standby gets a new password and LOGIN, the apps move, the
  old member gets NOLOGIN: the in-use member's password is never touched;
* ``rewrite`` -- the same, plus ``ALTER ROLE <in-use member> PASSWORD`` with
  its unchanged password (a new SCRAM salt, hence a new verifier), which is
  what ``rolekit rotate begin`` did before commit b30c90e.

It prints the attempts and failures through PgBouncer of each (about two
minutes in all).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from psycopg2 import sql

from bench.common import MEMBERS, example, log
from bench.load import MP, Target, WorkerPool, wait_ready, write_creds
from bench.stats import failure_bursts
from rolekit.secrets import generate_password
from rolekit.testing import Cluster
from rolekit.testing.pgbouncer import PgBouncer

ROTATIONS = 6
LAG = 0.5


def _alter(
    cluster: Cluster, role: str, password: str | None = None, login: bool | None = None
) -> None:
    conn = cluster.connect()
    try:
        with conn.cursor() as cur:
            ident = sql.Identifier(role)
            if password is not None:
                cluster.set_password(role, password, conn=conn)
            if login is not None:
                cur.execute(
                    sql.SQL("ALTER ROLE {} {}").format(
                        ident, sql.SQL("LOGIN" if login else "NOLOGIN")
                    )
                )
    finally:
        conn.close()


def run_one(rewrite_active: bool, major: int | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-control-"))
    with Cluster(major, log_statement="none") as cluster:
        project = example(work / "project", cluster)
        project.upgrade("dev")
        passwords = {m: project.secret_of(m) for m in MEMBERS}
        creds = work / "creds.json"
        with PgBouncer(cluster, auth="query") as bouncer:
            write_creds(creds, MEMBERS[0], passwords[MEMBERS[0]])
            go = MP.Event()
            through = WorkerPool(
                "control-pgbouncer", 4, Target(bouncer.host, bouncer.port), creds, work
            )
            direct = WorkerPool(
                "control-direct", 12, Target(cluster.host, cluster.port), creds, work
            )
            pools = [through, direct]
            for pool in pools:
                pool.start(go)
            wait_ready(pools)
            started = time.time()
            go.set()
            active, standby = MEMBERS
            for _ in range(ROTATIONS):
                time.sleep(3)
                passwords[standby] = generate_password()
                _alter(cluster, standby, passwords[standby], login=True)
                if rewrite_active:
                    _alter(cluster, active, passwords[active])
                time.sleep(LAG)
                write_creds(creds, standby, passwords[standby])
                time.sleep(4)
                _alter(cluster, active, login=False)
                active, standby = standby, active
            time.sleep(3)
            for pool in pools:
                pool.stop()
            records, errors = through.join()
            direct.join()
            log_summary = bouncer.log_summary()
    shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in records if r[2] != 0]
    return {
        "rewrite_active_member_password": rewrite_active,
        "rotations": ROTATIONS,
        "attempts_through_pgbouncer": len(records),
        "failed": len(failed),
        "failure_bursts": failure_bursts(failed, started),
        "errors": dict(errors),
        "pgbouncer_log": log_summary,
    }


def main() -> int:
    results = []
    for rewrite in (False, True):
        log(f"control: rotating by hand, rewrite the in-use member's password: {rewrite}")
        results.append(run_one(rewrite))
        log(json.dumps(results[-1]))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
