"""``python -m bench.demo`` (``make demo``): a full rotation under load, in a minute.

Starts a throwaway PostgreSQL (the system 15 if present, else downloaded
binaries), copies the example project into a temporary folder, gives the
members fresh dev passwords, upgrades, starts a few client processes that
reconnect in a loop, rotates ``my_app`` from tom to jerry with the CLI --
begin, hand the apps the new credentials, finish -- and shows that no
connection failed.  Then it downgrades to base and removes everything.

Exit status: 0 if every connection succeeded, 1 if any failed, 2 if a step
of the demo itself failed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

from bench.common import MEMBERS, example
from bench.load import write_creds
from rolekit.testing import Cluster, Project

FAMILY = "my_app"
CONTEXT = "dev"
CLIENTS = 3
#: seconds between the database change and the apps using the new credentials
LAG = 0.5

_MP = mp.get_context("spawn")


class DemoError(Exception):
    """A step of the demo failed (not a client connection)."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


# -- the client load -------------------------------------------------------------


def client(host: str, port: int, creds_path: str, stop: Any, ok: Any, failed: Any) -> None:
    """Connect, ``SELECT 1``, disconnect, again; re-read credentials when they change."""
    path = Path(creds_path)
    stamp: int | None = None
    user = password = ""
    while not stop.is_set():
        mtime = path.stat().st_mtime_ns
        if mtime != stamp:
            data = json.loads(path.read_text())
            user, password, stamp = data["user"], data["password"], mtime
        try:
            conn = psycopg2.connect(
                host=host,
                port=port,
                dbname="postgres",
                user=user,
                password=password,
                connect_timeout=10,
                application_name="rolekit-demo-app",
            )
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            finally:
                conn.close()
        except psycopg2.Error as exc:
            with failed.get_lock():
                failed.value += 1
            print(f"    client: {str(exc).strip().splitlines()[-1]}", file=sys.stderr, flush=True)
        else:
            with ok.get_lock():
                ok.value += 1
        time.sleep(0.01)


class Load:
    """A few client processes sharing one credentials file."""

    def __init__(self, cluster: Cluster, creds_path: Path, n: int = CLIENTS) -> None:
        self.stop_event = _MP.Event()
        self.ok = _MP.Value("q", 0)
        self.failed = _MP.Value("q", 0)
        self.procs = [
            _MP.Process(
                target=client,
                args=(
                    cluster.host,
                    cluster.port,
                    str(creds_path),
                    self.stop_event,
                    self.ok,
                    self.failed,
                ),
                daemon=True,
            )
            for _ in range(n)
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def counts(self) -> tuple[int, int]:
        with self.ok.get_lock(), self.failed.get_lock():
            return int(self.ok.value), int(self.failed.value)

    def stop(self) -> None:
        self.stop_event.set()
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# -- commands ------------------------------------------------------------------------


class Demo:
    """Runs ``alembic``/``rolekit`` in the project folder like a user would, and shows it."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.cluster = project.cluster

    def run(
        self, *args: str, show: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = self.project.run(sys.executable, "-m", *args, check=False, timeout=300)
        took = time.monotonic() - started
        if show:
            say(f"    $ {' '.join(self._shown(args))}   ({took:.1f}s)")
            for line in proc.stderr.splitlines():
                if (
                    "] running " in line
                    or "verified login" in line
                    or line.startswith("drain:")
                    or "ALTER ROLE" in line
                    or "Running upgrade" in line
                ):
                    say("    " + line.split("] ", 1)[-1])
            for line in proc.stdout.splitlines():
                say("    " + line)
        if check and proc.returncode != 0:
            raise DemoError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    @staticmethod
    def _shown(args: tuple[str, ...]) -> list[str]:
        if args[0] == "rolekit.cli":
            return ["rolekit", *args[1:]]
        return list(args)

    def alembic(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("alembic", "-x", f"context={CONTEXT}", *args)

    def rolekit(
        self, *args: str, show: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("rolekit.cli", *args, show=show, check=check)

    def creds(self) -> tuple[str, str]:
        return self.project.creds(FAMILY, CONTEXT)

    def sessions(self) -> str:
        with self.cluster.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT usename::text, count(*) FROM pg_stat_activity"
                " WHERE usename = ANY(%s) GROUP BY 1 ORDER BY 1",
                (list(MEMBERS),),
            )
            rows = dict(cur.fetchall())
        return ", ".join(f"{m}: {rows.get(m, 0)}" for m in MEMBERS)


def _progress(load: Load, demo: Demo, label: str) -> None:
    ok, failed = load.counts()
    say(f"    [{label}] connections ok: {ok}, failed: {failed}; live sessions {demo.sessions()}")


def demo(work: Path) -> int:
    started = time.monotonic()
    step("starting a throwaway PostgreSQL")
    with Cluster() as cluster:
        say(f"    {cluster!r}, data in {cluster.datadir}")
        migrator, password = cluster.create_migrator()
        say(f"    migrations run as {migrator!r} (CREATEROLE, owns the database, not a superuser)")
        root = work / "project"
        step(f"copying the example project to {root}")
        project = example(root, cluster, user=migrator, password=password, contexts=[CONTEXT])
        say(f"    generated dev passwords for {', '.join(MEMBERS)} into passwords.env")
        runner = Demo(project)

        step("alembic upgrade: the family, its schema, passwords and login state")
        runner.alembic("upgrade", "head")

        step(f"starting {CLIENTS} client processes (connect, SELECT 1, disconnect, repeat)")
        creds_path = work / "app-credentials.json"
        user, app_password = runner.creds()
        write_creds(creds_path, user, app_password)
        say(f"    the apps use {user}")
        load = Load(cluster, creds_path)
        load.start()
        try:
            time.sleep(2)
            _progress(load, runner, "steady")

            step("rotate 1/3 -- begin: the standby gets a fresh password and may log in")
            runner.rolekit("rotate", FAMILY, "begin", "--context", CONTEXT, "--apply")
            _progress(load, runner, "overlap")

            step(f"rotate 2/3 -- the apps pick up the new credentials ({LAG} s later)")
            time.sleep(LAG)
            user, app_password = runner.creds()
            write_creds(creds_path, user, app_password)
            say(f"    $ rolekit creds {FAMILY} --context {CONTEXT} --json  -> apps now use {user}")
            time.sleep(2)
            _progress(load, runner, "moved")

            step("rotate 3/3 -- finish: wait for the old member to drain, then NOLOGIN")
            # The demo's apps connect many times a second, so a 5 s quiet period
            # shows the mechanics; the default (90 s) is for clients that connect
            # once a minute.
            runner.rolekit(
                "rotate",
                FAMILY,
                "finish",
                "--context",
                CONTEXT,
                "--apply",
                "--drain-timeout",
                "60",
                "--quiet-period",
                "5",
            )
            time.sleep(1.5)
            _progress(load, runner, "steady")
        finally:
            load.stop()
        ok, failed = load.counts()

        step("result")
        say(f"    connection attempts: {ok + failed}")
        say(f"    failed connections: {failed}")

        step("rolekit status")
        status = runner.rolekit("status", "--context", CONTEXT, show=False, check=False)
        for line in status.stdout.splitlines():
            say("    " + line)
        if status.returncode != 0:
            say(f"    (rolekit status exited {status.returncode}: it found a problem)")

        step("alembic downgrade base: the family and its schema go away")
        runner.run("alembic", "downgrade", "base")
        step("stopping PostgreSQL")
    say(
        f"\ndone in {time.monotonic() - started:.0f}s: "
        + (
            "no connection failed during the rotation."
            if failed == 0
            else f"{failed} connection(s) FAILED."
        )
    )
    return 0 if failed == 0 else 1


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="rolekit-demo-"))
    try:
        return demo(work)
    except (DemoError, RuntimeError) as exc:
        print(f"rolekit demo: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
