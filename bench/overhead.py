"""What rolekit adds to a no-op ``alembic upgrade head``.

The example project (rolekit's env.py, repeatables, secrets) and a plain
Alembic project (a minimal env.py: ``context.configure(connection=...)`` and
``run_migrations()``, with as many trivial revisions) run against the same
database, both already at head, interleaved in alternating order so drift
in the machine's load hits both alike.  Each run is a fresh ``alembic``
subprocess, as in a deploy.
"""

from __future__ import annotations

import compileall
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import rolekit
from bench.common import MEMBERS, example, log, machine, median, rounded, write_json
from rolekit.testing import Cluster, Project

#: the package, compiled to bytecode before timing like an installed one
ROLEKIT = Path(rolekit.__file__).parent

RUNS = 31

_PLAIN_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = .
path_separator = os
sqlalchemy.url = postgresql+psycopg2://postgres@127.0.0.1:5432/postgres

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

_PLAIN_ENV = '''\
"""A plain Alembic env.py: no rolekit."""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

url = os.environ.get("DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    # its own version table: the rolekit project shares the database
    context.configure(connection=connection, version_table="plain_alembic_version")
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

_PLAIN_REVISION = '''\
"""Trivial revision {rev}."""

from alembic import op

revision = "{rev}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")


def downgrade() -> None:
    op.execute("SELECT 1")
'''


def plain_project(root: Path, cluster: Cluster, revisions: int) -> Project:
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(_PLAIN_INI)
    (root / "migrations" / "env.py").write_text(_PLAIN_ENV)
    for n in range(1, revisions + 1):
        rev = f"{n:04d}"
        down = f'"{n - 1:04d}"' if n > 1 else "None"
        (root / "migrations" / "versions" / f"{rev}_trivial.py").write_text(
            _PLAIN_REVISION.format(rev=rev, down=down)
        )
    return Project(root, cluster)


def hand_filled(project: Project) -> None:
    """A passwords.env as passwords.env.example invites: filled in by hand, no
    fingerprint key (rolekit adds one on the first run)."""
    lines = [f"{role}.password.dev={project.secret_of(role)}\n" for role in MEMBERS]
    path = project.root / "passwords.env"
    path.write_text("".join(lines))
    path.chmod(0o600)


def count_statements(log_text: str) -> int:
    return len(re.findall(r"LOG:  statement: ", log_text))


def run(major: int | None = None, runs: int = RUNS) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rolekit-bench-overhead-"))
    bench_started = time.monotonic()
    with Cluster(major) as cluster:
        log(f"overhead: {cluster!r}")
        info = machine(cluster)
        rolekit_project = example(work / "rolekit", cluster)
        hand_filled(rolekit_project)
        revisions = len(list((rolekit_project.root / "migrations" / "versions").glob("*.py")))
        plain = plain_project(work / "plain", cluster, revisions)
        # bytecode for both, as an installed package and a deployed project have
        for folder in (ROLEKIT, rolekit_project.root, plain.root):
            compileall.compile_dir(folder, quiet=1)

        started = time.perf_counter()
        rolekit_project.upgrade("dev")
        full_apply_s = time.perf_counter() - started
        started = time.perf_counter()
        plain.upgrade()
        plain_full_apply_s = time.perf_counter() - started

        def noop_rolekit() -> None:
            proc = rolekit_project.upgrade("dev")
            if "] running " in proc.stderr:
                raise RuntimeError(f"the rolekit no-op ran something:\n{proc.stderr}")

        def noop_plain() -> None:
            plain.upgrade()

        # one untimed run each (imports cached by the OS), and a statement count
        counts = {}
        for name, fn in (("rolekit", noop_rolekit), ("alembic", noop_plain)):
            offset = cluster.log_size()
            fn()
            counts[name] = count_statements(cluster.log_since(offset))

        times: dict[str, list[float]] = {"rolekit": [], "alembic": []}
        # CPU seconds (user + system) of each finished alembic process: less
        # sensitive than wall time to what else the machine runs
        cpu: dict[str, list[float]] = {"rolekit": [], "alembic": []}
        pairs = [("rolekit", noop_rolekit), ("alembic", noop_plain)]
        for i in range(runs):
            for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(
                    after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                )
        log(
            f"overhead: no-op medians rolekit {median(times['rolekit']):.3f}s, "
            f"alembic {median(times['alembic']):.3f}s"
        )

    shutil.rmtree(work, ignore_errors=True)
    med_rolekit = median(times["rolekit"]) or 0.0
    med_alembic = median(times["alembic"]) or 1e-9
    pairwise = [r / a for r, a in zip(times["rolekit"], times["alembic"], strict=True)]
    cpu_rolekit = median(cpu["rolekit"]) or 0.0
    cpu_alembic = median(cpu["alembic"]) or 1e-9
    data: dict[str, Any] = {
        "machine": info,
        "runs_each": runs,
        "revisions_each": revisions,
        "ratio_noop_vs_alembic": rounded(med_rolekit / med_alembic, 3),
        "noop_median_s": rounded(med_rolekit, 4),
        "alembic_noop_median_s": rounded(med_alembic, 4),
        "noop_extra_s": rounded(med_rolekit - med_alembic, 4),
        "ratio_noop_pairwise_median": rounded(median(pairwise), 3),
        "ratio_noop_cpu_vs_alembic": rounded(cpu_rolekit / cpu_alembic, 3),
        "noop_cpu_median_s": rounded(cpu_rolekit, 4),
        "alembic_noop_cpu_median_s": rounded(cpu_alembic, 4),
        "goal_ratio_noop_vs_alembic": 1.05,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "full_apply_s": rounded(full_apply_s, 3),
        "alembic_full_apply_s": rounded(plain_full_apply_s, 3),
        "noop_statements": counts["rolekit"],
        "alembic_noop_statements": counts["alembic"],
        "noop_runs_s": [rounded(t, 4) for t in times["rolekit"]],
        "alembic_noop_runs_s": [rounded(t, 4) for t in times["alembic"]],
        "method": (
            "wall time of `python -m alembic [-x context=dev] upgrade head` subprocesses, "
            "both projects at head on the same fresh cluster, interleaved in alternating order; "
            "full_apply_s = the example project's upgrade from base on that fresh cluster; "
            "statements counted with log_statement=all; *_cpu_* = user + system seconds of "
            "each alembic process (getrusage of the children); ratio_noop_pairwise_median = "
            "the median of rolekit/alembic over the interleaved pairs"
        ),
        "python": sys.version.split()[0],
    }
    data["bench_duration_s"] = round(time.monotonic() - bench_started, 1)
    write_json("upgrade_overhead.json", data)
    return data
