"""The examples of examples/ run for real and follow a rotation.

Each example runs as a subprocess, as its docstring says to run it, against a
throwaway cluster and a copy of the example project after ``alembic upgrade``:
it must log in as ``my_app_tom``; once a rotation prefers ``my_app_jerry``, as
that member.  The long-running ones (the FastAPI app, the Kubernetes worker)
must switch while they run, without a restart; the Kubernetes worker reads a
directory laid out like a Secret volume whose ``..data`` symlink is swapped as
the kubelet does.  Nothing any example prints may contain a password.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from rolekit.rotation.creds_formats import k8s_name
from rolekit.testing import Project
from tests.clients.helpers import JERRY, TOM, set_state, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

#: how the test runs the FastAPI example: uvicorn is no dependency, so through
#: Starlette's TestClient, which runs the app's lifespan (engine created, then
#: disposed).  argv: the example's path, the number of requests (0: one every
#: 50 ms until stdin is closed).
FASTAPI_CLIENT = """
import importlib.util, sys, threading, warnings
warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
from fastapi.testclient import TestClient

spec = importlib.util.spec_from_file_location("example_app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
count = int(sys.argv[2])
closed = threading.Event()
if not count:
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
with TestClient(module.app) as client:
    made = 0
    while made < count if count else not closed.wait(0.05):
        response = client.get("/whoami")
        response.raise_for_status()
        print(response.json()["user"], flush=True)
        made += 1
"""

#: example -> the command that runs it (with a count of queries or requests)
COMMANDS = {
    "psycopg_pool_worker": [sys.executable, str(EXAMPLES / "psycopg_pool_worker.py")],
    "asyncpg_worker": [sys.executable, str(EXAMPLES / "asyncpg_worker.py")],
    "fastapi_async_sqlalchemy": [
        sys.executable,
        "-c",
        FASTAPI_CLIENT,
        str(EXAMPLES / "fastapi_async_sqlalchemy.py"),
    ],
}
QUERIES = 6


def example_env(project: Project, **extra: str) -> dict[str, str]:
    """This environment without anything that could log in (no ``PG*``, no
    ``DATABASE_URL``: that is the superuser's), plus where the database is."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "ROLEKIT_")) and k not in ("DATABASE_URL", "APP_DATABASE_URL")
    }
    cluster = project.cluster
    env["APP_DATABASE_URL"] = f"postgresql://{cluster.host}:{cluster.port}/postgres"
    env.update(extra)
    return env


def from_project(project: Project) -> dict[str, str]:
    return {
        "ROLEKIT_INI": str(project.root / "alembic.ini"),
        "ROLEKIT_FAMILY": "my_app",
        "ROLEKIT_CONTEXT": "dev",
    }


def creds(project: Project, fmt: str, output: Path | None = None) -> str:
    """``rolekit creds my_app --context dev --format FMT [--output FILE]``."""
    args = ["creds", "my_app", "--context", "dev", "--format", fmt]
    args += ["-c", str(project.root / "alembic.ini")]
    if output is not None:
        args += ["--output", str(output)]
    return project.rolekit(*args).stdout


def secrets_of(project: Project) -> list[str]:
    return [*project.passwords.values(), project.cluster.superuser_password]


def assert_no_secret(project: Project, where: str, *texts: str) -> None:
    for secret in secrets_of(project):
        assert all(secret not in text for text in texts), f"a password {where}"


def run_examples(
    project: Project, cwd: Path, example: str, *sources: Mapping[str, str]
) -> list[list[str]]:
    """Run *example* once per source, side by side, to the end: the session users
    each run printed."""
    procs = [
        subprocess.Popen(
            [*COMMANDS[example], str(QUERIES)],
            cwd=cwd,
            env=example_env(project, **source),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for source in sources
    ]
    users = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{example} exited {proc.returncode}:\n{err}"
            assert_no_secret(project, "was printed", out, err)
            users.append(out.split())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return users


def start_rotation(project: Project, *, upgrade: bool = True) -> None:
    """Give jerry a password and make it the incoming member (both may log in)."""
    project.set_password(JERRY, "dev")
    set_state(project, [TOM, JERRY], incoming=JERRY)
    if upgrade:
        project.upgrade("dev")


@pytest.mark.parametrize("example", sorted(COMMANDS))
def test_example_logs_in_as_the_preferred_member(
    project: Project, tmp_path: Path, example: str
) -> None:
    """From a credentials file and from the project's files: each run follows its
    source, a file until it is rewritten, the project's files as soon as they change."""
    project.upgrade("dev")
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    creds(project, "json", first)
    file_source = {"ROLEKIT_CREDENTIALS_FILE": str(first)}
    tom, jerry = [TOM] * QUERIES, [JERRY] * QUERIES
    assert run_examples(project, tmp_path, example, file_source, from_project(project)) == [tom] * 2

    # The project's files run ahead of the database: jerry is preferred but not
    # applied yet, so his login is refused and the example falls back to tom.
    start_rotation(project, upgrade=False)
    assert run_examples(project, tmp_path, example, from_project(project)) == [tom]

    project.upgrade("dev")
    creds(project, "json", second)
    # the project's files prefer jerry now; each file is followed, not the project:
    # the first still names tom alone (who may still log in), the second jerry
    assert run_examples(
        project,
        tmp_path,
        example,
        from_project(project),
        file_source,
        {"ROLEKIT_CREDENTIALS_FILE": str(second)},
    ) == [jerry, tom, jerry]


# -- long-running examples ------------------------------------------------------------


class Running:
    """A long-running example; the session users it prints are collected as they come."""

    def __init__(
        self, project: Project, cmd: Sequence[str], cwd: Path, source: Mapping[str, str]
    ) -> None:
        self.project = project
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=example_env(project, **source),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def next_users(self, count: int = 3, timeout: float = 20) -> list[str]:
        """The session users of the next *count* queries."""
        mark = len(self.lines)

        def printed() -> bool:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers finish
                raise AssertionError(f"the example exited {self.proc.returncode}:\n{self.stderr}")
            return len(self.lines) >= mark + count

        wait_for(f"{count} queries", printed, timeout)
        return self.lines[mark : mark + count]

    def wait_until(self, user: str, timeout: float = 20) -> None:
        """Until three queries in a row ran as *user*."""
        wait_for(f"queries as {user}", lambda: self.next_users(3, timeout) == [user] * 3, timeout)

    def stop(self, how: str) -> None:
        """Close stdin or send SIGTERM; the example must exit cleanly and print no secret."""
        if how == "sigterm":
            self.proc.send_signal(signal.SIGTERM)
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(10)
        assert code == 0, f"the example exited {code}:\n{self.stderr}"
        assert_no_secret(self.project, "was printed", "\n".join(self.lines), self.stderr)

    def assert_switched_once(self) -> None:
        """tom, then jerry: one switch, never back."""
        switch = self.lines.index(JERRY)
        assert switch > 0 and set(self.lines[:switch]) == {TOM}
        assert set(self.lines[switch:]) == {JERRY}, self.lines


def test_fastapi_app_follows_a_rotation_without_restart(project: Project, tmp_path: Path) -> None:
    """The app keeps serving: as tom, still as tom after the upgrade (its file is
    unchanged), as jerry once the file is rewritten; one switch, no restart."""
    project.upgrade("dev")
    creds_file = tmp_path / "credentials.json"
    creds(project, "json", creds_file)
    cmd = [*COMMANDS["fastapi_async_sqlalchemy"], "0"]
    app = Running(project, cmd, tmp_path, {"ROLEKIT_CREDENTIALS_FILE": str(creds_file)})
    try:
        app.wait_until(TOM)
        start_rotation(project)
        assert app.next_users(5) == [TOM] * 5  # its file is unchanged
        creds(project, "json", creds_file)  # what a deploy step does after the upgrade
        app.wait_until(JERRY, timeout=10)
    finally:
        app.stop("close stdin")  # the lifespan's shutdown disposes of the engine
    app.assert_switched_once()


# -- Kubernetes -------------------------------------------------------------------------


def yaml_values(text: str, key: str) -> list[str]:
    """The scalar values of *key* in a YAML file (no YAML library is a dependency)."""
    return re.findall(rf"^\s*(?:- )?{key}:\s*(\S+)", text, re.MULTILINE)


def project_secret(volume: Path, secret: dict[str, object], items: Mapping[str, str]) -> None:
    """Write a Secret into *volume* as the kubelet does (its AtomicWriter): the files
    in a new timestamped directory, the ``..data`` symlink swapped to it by one
    rename, a symlink per file into ``..data``, the old directory removed."""
    data = secret["stringData"]
    assert isinstance(data, dict)
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    (volume / stamp).mkdir(mode=0o755)
    for key, path in items.items():
        (volume / stamp / path).write_text(data[key])
    current = volume / "..data"
    old = os.readlink(current) if current.is_symlink() else None
    os.symlink(stamp, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", current)
    for path in items.values():
        if not (volume / path).is_symlink():
            os.symlink(f"..data/{path}", volume / path)
    if old is not None:
        for file in (volume / old).iterdir():
            file.unlink()
        (volume / old).rmdir()


def test_kubernetes_worker_follows_its_secret_volume(project: Project, tmp_path: Path) -> None:
    """deployment.yaml mounts what ``--format k8s-secret`` makes; worker.py follows
    the kubelet's ``..data`` swaps through a whole rotation, without a restart."""
    manifest = (EXAMPLES / "kubernetes" / "deployment.yaml").read_text()
    # a subPath mount would never see the Secret change
    assert "\t" not in manifest and yaml_values(manifest, "subPath") == []
    assert yaml_values(manifest, "kind") == ["Deployment"]
    # the Secret that `rolekit creds my_app --context prod --format k8s-secret` applies
    assert yaml_values(manifest, "secretName") == [k8s_name("my_app", "prod")]
    (mount,) = yaml_values(manifest, "mountPath")
    items = dict(re.findall(r"- key: (\S+)\s+path: (\S+)", manifest))
    assert items == {"credentials.json": "credentials.json"}
    (file_env,) = re.findall(r"name: ROLEKIT_CREDENTIALS_FILE\s+value: (\S+)", manifest)
    assert file_env == f"{mount}/credentials.json"

    project.upgrade("dev")
    volume = tmp_path / "etc-rolekit"  # stands for the mountPath
    volume.mkdir()
    project_secret(volume, json.loads(creds(project, "k8s-secret")), items)
    worker = Running(
        project,
        [sys.executable, str(EXAMPLES / "kubernetes" / "worker.py")],
        tmp_path,
        {
            "ROLEKIT_CREDENTIALS_FILE": str(volume / "credentials.json"),
            "ROLEKIT_CONTEXT": "dev",  # the manifest's is prod
            "WORKER_INTERVAL": "0.05",
            "WORKER_SECONDS": "60",
        },
    )
    try:
        worker.wait_until(TOM)
        start_rotation(project)
        assert worker.next_users(5) == [TOM] * 5  # the Secret is not updated yet
        project_secret(volume, json.loads(creds(project, "k8s-secret")), items)
        worker.wait_until(JERRY, timeout=5)
        # finish: the drain succeeds, since the worker's sessions moved to jerry
        set_state(project, [JERRY])
        project.upgrade("dev", x={"drain_timeout": "20"})
        project_secret(volume, json.loads(creds(project, "k8s-secret")), items)
        assert worker.next_users(5) == [JERRY] * 5
    finally:
        worker.stop("sigterm")
    worker.assert_switched_once()


# -- shell ------------------------------------------------------------------------------


def logging_path(bin_dir: Path, log: Path) -> str:
    """A PATH on which every program logs its arguments to *log* before it runs:
    a shim per program of this PATH (shell builtins start no process)."""
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            shim = bin_dir / entry.name
            if shim.exists() or not os.access(entry.path, os.X_OK) or entry.is_dir():
                continue
            shim.write_text(
                f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >>"{log}"\nexec "{entry.path}" "$@"\n'
            )
            shim.chmod(0o755)
    return str(bin_dir)


def test_shell_consumer_reads_secrets_from_stdin_or_a_file(
    project: Project, tmp_path: Path
) -> None:
    """run_psql.sh sources the env format from stdin or a file: no program it starts
    sees a password in its arguments, and the ALT pair is its fallback."""
    script = EXAMPLES / "shell" / "run_psql.sh"
    code = script.read_text()
    # no literal password: every PASSWORD is set from a variable; the secrets come from a file
    assert re.findall(r"PASSWORD=(?!\$)", code) == [] and '. "$creds"' in code
    argv_log, tmp = tmp_path / "argv.log", tmp_path / "tmp"
    tmp.mkdir()
    path = logging_path(tmp_path / "bin", argv_log)

    def run_psql(*args: str, stdin: str = "") -> tuple[str, str]:
        proc = subprocess.run(
            ["/bin/sh", str(script), *args],
            input=stdin,
            cwd=tmp_path,
            env=example_env(project, PATH=path, TMPDIR=str(tmp)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert_no_secret(project, "was printed", proc.stdout, proc.stderr)
        assert_no_secret(project, "was in the arguments of a program", argv_log.read_text())
        assert list(tmp.iterdir()) == []  # its temporary files are gone
        return proc.stdout.strip(), proc.stderr

    project.upgrade("dev")
    env_creds = creds(project, "env")
    assert "PGPASSWORD=" in env_creds and "MY_APP_ALT_USER" not in env_creds
    assert run_psql(stdin=env_creds) == (TOM, "")
    assert " -c select session_user " in argv_log.read_text()  # psql ran through a shim

    # the credentials are ahead of the database: jerry is refused, tom is the fallback
    start_rotation(project, upgrade=False)
    ahead = creds(project, "env")
    assert f"PGUSER={JERRY}" in ahead and f"MY_APP_ALT_USER={TOM}" in ahead
    user, stderr = run_psql(stdin=ahead)
    assert (user, stderr) == (TOM, f"run_psql.sh: {JERRY} was rejected; trying {TOM}\n")

    project.upgrade("dev")
    creds(project, "env", tmp_path / "creds.env")
    assert run_psql("creds.env") == (JERRY, "")
