"""``rolekit rotate FAMILY auto``: a whole rotation from cron, resumable, one run at a time.

Each test runs the real CLI against a real cluster; the publish commands are
small shell commands that read the credentials from their stdin.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from rolekit.project.document import from_document
from rolekit.secrets import SecretsFile
from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import Client, connect_as, wait_for_no_sessions
from tests.gitops import checkout, checkout_with_remote, secrets_in_age
from tests.guards.helpers import can_login, password
from tests.processes import gone

AUTO = ("rotate", "my_app", "auto", "--context", "dev", "--apply", "--json")
#: a publish command: the document on stdin into published.json (in the project folder)
PUBLISH = "cat > published.json.tmp && mv published.json.tmp published.json"


def _auto(project: Project, *args: str, check: bool = False) -> tuple[int, list[dict[str, Any]]]:
    proc = project.rolekit(*AUTO, *args, check=check)
    for role in ("my_app_tom", "my_app_jerry"):
        assert password(project, role) not in proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events


def _published(project: Project) -> tuple[str, str | None]:
    creds = from_document((project.root / "published.json").read_text(), "published.json")
    return creds.preferred[0], creds.alternate[0] if creds.alternate else None


def test_not_due_reads_and_changes_nothing(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    before, state = role_snapshot(project.cluster), project.state()
    code, events = _auto(project, "--max-age", "90d", "--publish", PUBLISH)
    assert code == 0
    assert events[0]["event"] == "due check" and events[0]["due"] is False
    assert events[-1] == {"event": "done", "result": "not due"}
    assert role_snapshot(project.cluster) == before and project.state() == state
    assert not (project.root / "published.json").exists()


def test_a_due_family_is_rotated_and_published(any_project: Project) -> None:
    project = any_project
    project.upgrade("dev")
    code, events = _auto(project, "--max-age", "0", "--publish", PUBLISH)
    assert code == 0, events
    assert [e["event"] for e in events] == [
        "due check", "phase", "publish", "wait", "phase", "done",
    ]  # fmt: skip
    assert events[1]["phase"] == "overlap" and events[4]["phase"] == "steady"
    assert events[-1]["result"] == "rotated"
    # the apps got both members during the overlap, the new one first
    assert _published(project) == ("my_app_jerry", "my_app_tom")
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    assert project.state()["families"]["my_app"]["dev"] == {"login": ["my_app_jerry"], "serial": 2}
    # back again: the next due run rotates to tom
    assert _auto(project, "--max-age", "0", "--publish", PUBLISH)[0] == 0
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": False}
    # the server logged every statement (log_statement = all): no password in it
    log = project.cluster.log_text()
    for role in ("my_app_tom", "my_app_jerry"):
        assert password(project, role) not in log


def test_a_failed_publish_stays_in_the_overlap_and_the_next_run_completes(
    project: Project,
) -> None:
    project.upgrade("dev")
    code, _ = _auto(project, "--max-age", "0", "--publish", "cat > /dev/null; exit 7")
    assert code == 1
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}  # no outage
    new_password = password(project, "my_app_jerry")
    code, events = _auto(project, "--max-age", "90d", "--publish", PUBLISH)
    assert code == 0 and events[-1]["result"] == "resumed"
    assert password(project, "my_app_jerry") == new_password  # no second begin
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_the_publish_command_gets_none_of_rolekits_secrets_in_its_environment(
    project: Project,
) -> None:
    """Credentials on stdin only: the migrator's password (in DATABASE_URL or
    PGPASSWORD) and the age identity stay with rolekit."""
    project.upgrade("dev")
    private = {"PGPASSWORD": "pg-secret-4711", "ROLEKIT_AGE_IDENTITY": "AGE-SECRET-KEY-4711"}
    publish = f"env > publish.env; {PUBLISH}"
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", publish, **private)
    assert '"result": "rotated"' in proc.stdout
    seen = (project.root / "publish.env").read_text()
    assert "ROLEKIT_AGE_IDENTITY=" not in seen and "DATABASE_URL=" not in seen
    assert "PGPASSWORD=" not in seen and "4711" not in seen and project.password not in seen
    for role in ("my_app_tom", "my_app_jerry"):
        assert password(project, role) not in seen
    assert "PATH=" in seen  # the rest of the environment is passed on


def test_apps_that_did_not_move_exit_3_in_the_overlap(project: Project) -> None:
    project.upgrade("dev")
    wait_for_no_sessions(project.cluster, "my_app_tom")
    with Client(connect_as(project, "my_app_tom"), keep=True, interval=0.2) as app:
        proc = project.rolekit(
            *AUTO, "--max-age", "0", "--publish", PUBLISH, "--move-timeout", "2", check=False
        )
        assert proc.returncode == 3, proc.stderr
        assert "my_app_tom: app@" in proc.stderr  # names the sessions
        assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}
    assert app.failures == []
    code, events = _auto(project, "--max-age", "90d", "--publish", PUBLISH)
    assert code == 0 and events[-1]["result"] == "resumed"
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def _spawn_auto(project: Project, publish: str) -> subprocess.Popen[str]:
    return project.spawn(sys.executable, "-m", "rolekit.cli", *AUTO, "--max-age", "0",
                         "--publish", publish)  # fmt: skip


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


#: where a run is killed: the lines of its output to wait for, in order, and
#: whether an application keeps the old member busy meanwhile (so the run waits)
KILL_POINTS = {
    "begin, before its commit": (["ALTER ROLE my_app_jerry PASSWORD <redacted>"], False),
    "begin, after its commit": (["verified login as my_app_jerry"], False),
    "publish": ([], False),
    "wait": (["drain: waiting"], True),
    "finish, before its commit": (["drained after", 'ALTER ROLE "my_app_tom" NOLOGIN'], False),
    "finish, after its commit": (["drained after", "verified login as my_app_jerry"], False),
}
#: kill points between a commit and the state file's write: the test holds the
#: file's write lock from the first marker on, so the run is surely killed there
#: (the write follows the last line it prints by a few milliseconds)
HOLDS_THE_WRITE = {"finish, after its commit"}


@contextlib.contextmanager
def _write_lock(project: Project) -> Iterator[None]:
    """The lock every write of rotation.json takes (rolekit.project.state.update)."""
    fd = os.open(project.state_path.with_name("rotation.json.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _kill_at(project: Project, run: subprocess.Popen[str], phase: str, started: Path) -> None:
    """SIGKILL *run* once it printed the markers of *phase* (holding the state
    file's write lock from the second marker on where the phase says so)."""
    markers, _ = KILL_POINTS[phase]
    assert run.stderr is not None
    seen = []
    with contextlib.ExitStack() as holding:
        for n, marker in enumerate(markers):
            if n == 1 and phase in HOLDS_THE_WRITE:
                holding.enter_context(_write_lock(project))
            for line in run.stderr:
                seen.append(line)
                if marker in line:
                    break
            else:
                raise AssertionError(f"{marker!r} never appeared:\n{''.join(seen)}")
        if phase == "publish":
            _wait_for(started)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)


@pytest.mark.parametrize("phase", list(KILL_POINTS))
def test_a_run_killed_with_sigkill_is_completed_by_the_next(project: Project, phase: str) -> None:
    """SIGKILL at each phase, then the next run (as cron would start it): the
    family ends steady on the new member, whose password on file works, and
    an application on the new member never fails meanwhile."""
    _, busy = KILL_POINTS[phase]
    project.upgrade("dev")
    wait_for_no_sessions(project.cluster, "my_app_tom")
    started = project.root / "publish.pid"
    publish = f"echo $$ > {started}; sleep 60" if phase == "publish" else PUBLISH
    with contextlib.ExitStack() as stack:
        if busy:  # an application still on the old member: the run waits in the drain
            app = stack.enter_context(
                Client(connect_as(project, "my_app_tom"), keep=True, interval=0.2)
            )
        run = _spawn_auto(project, publish)
        _kill_at(project, run, phase, started)
        if phase == "publish":
            os.kill(int(started.read_text()), signal.SIGKILL)
        if can_login(project)["my_app_jerry"]:  # the application moves to the new member
            if busy:
                app.switch(connect_as(project, "my_app_jerry"))
            else:
                app = stack.enter_context(
                    Client(connect_as(project, "my_app_jerry"), keep=True, interval=0.2)
                )
        code, events = _auto(project, "--max-age", "0", "--publish", PUBLISH)
        assert code == 0, events
        assert events[-1]["result"] in ("rotated", "resumed")
        # the password the run set is the one on file: nothing lost, no second begin
        connect_as(project, "my_app_jerry")().close()
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    assert project.state()["families"]["my_app"]["dev"] == {"login": ["my_app_jerry"], "serial": 2}
    assert _published(project)[0] == "my_app_jerry"
    if busy or phase != "begin, before its commit":
        assert app.attempts > 0 and app.failures == []


def test_two_runs_at_once_the_second_exits_4(project: Project) -> None:
    project.upgrade("dev")
    started = project.root / "publish.pid"
    first = _spawn_auto(project, f"echo $$ > {started}; sleep 3; {PUBLISH}")
    try:
        _wait_for(started)
        began = time.monotonic()
        proc = project.rolekit(*AUTO, "--max-age", "0", check=False)
        assert proc.returncode == 4, proc.stderr
        assert "another 'rolekit rotate' is running" in proc.stderr
        assert time.monotonic() - began < 30  # at once, not after the first run
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}


def test_git_commit_commits_exactly_the_state_file_when_secrets_are_ignored(
    project: Project,
) -> None:
    project.upgrade("dev")
    git = checkout(project, "passwords.env\npublished.json\n*.lock\n__pycache__/\n")
    proc = project.rolekit(
        *AUTO, "--max-age", "0", "--publish", PUBLISH, "--git-commit", check=False
    )
    assert proc.returncode == 0, proc.stderr
    log = git("log", "--format=%s", "-n", "2").splitlines()
    assert log == ["rolekit: rotate my_app (dev): finish", "rolekit: rotate my_app (dev): begin"]
    for rev in ("HEAD", "HEAD~1"):
        assert git("show", "--name-only", "--format=", rev).split() == ["migrations/rotation.json"]
        assert password(project, "my_app_jerry") not in git("show", rev)
    assert git("status", "--porcelain") == ""  # the ignored plaintext secrets stay out


def test_git_push_refuses_a_secrets_file_git_ignores_before_any_change(project: Project) -> None:
    project.upgrade("dev")
    checkout_with_remote(project, "passwords.env\npublished.json\n*.lock\n__pycache__/\n")
    before, state = role_snapshot(project.cluster), project.state()
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", PUBLISH, "--git-push",
                           check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "git ignores passwords.env" in proc.stderr and "passwords.dev.sops.env" in proc.stderr
    assert role_snapshot(project.cluster) == before and project.state() == state
    assert not (project.root / "published.json").exists()


IGNORED = "passwords.env\npublished.json\nremote-at-publish.txt\n*.lock\n__pycache__/\n"


def test_git_push_pushes_each_phase_before_publishing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout that vanishes (CI, CronJob): the remote has each phase, with the
    new password in the age file, before the apps are given it."""
    age = secrets_in_age(project, monkeypatch)
    project.upgrade("dev")
    git, remote = checkout_with_remote(project, IGNORED)
    # the publish command records what the remote had when it ran
    seen = project.root / "remote-at-publish.txt"
    publish = f"git --git-dir={remote} log --format=%s -n 1 main > {seen}; {PUBLISH}"
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", publish, "--git-push")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert seen.read_text().strip() == "rolekit: rotate my_app (dev): begin"
    assert [e["event"] for e in events].count("git push") == 2
    remote_log = git("--git-dir", str(remote), "log", "--format=%s", "-n", "2", "main")
    assert remote_log.splitlines() == [
        "rolekit: rotate my_app (dev): finish", "rolekit: rotate my_app (dev): begin",
    ]  # fmt: skip
    begin = git("--git-dir", str(remote), "show", "--name-only", "--format=", "main~1")
    assert sorted(begin.split()) == ["dev.env.age", "migrations/rotation.json"]
    pushed = project.root.parent / "pushed.env.age"
    pushed.write_bytes(
        subprocess.run(
            ["git", "--git-dir", str(remote), "show", "main:dev.env.age"],
            capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    new_password = age.get("my_app_jerry", "dev").reveal()
    assert SecretsFile(pushed).get("my_app_jerry", "dev").reveal() == new_password
    assert new_password not in proc.stdout + proc.stderr


def test_a_rejected_push_stops_before_publishing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_in_age(project, monkeypatch)
    project.upgrade("dev")
    _, remote = checkout_with_remote(project, IGNORED)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\necho 'branch protected: https://ci:t0ken-4711@git.example/' >&2\nexit 1\n"
    )
    hook.chmod(0o755)
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", PUBLISH, "--git-push",
                           check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "git push failed" in proc.stderr and "nothing was published" in proc.stderr
    assert "t0ken-4711" not in proc.stdout + proc.stderr  # a token in a URL is masked
    assert not (project.root / "published.json").exists()
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}  # overlap: no outage


def test_a_failing_publish_shows_its_stderr_without_secrets(project: Project) -> None:
    project.upgrade("dev")
    failing = 'doc=$(cat); echo "Forbidden: cannot patch; got $doc" | tr -d "\\n" >&2; exit 3'
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", failing, check=False)
    assert proc.returncode == 1
    assert "Forbidden: cannot patch" in proc.stderr
    for role in ("my_app_tom", "my_app_jerry"):
        assert password(project, role) not in proc.stdout + proc.stderr
    assert "<redacted>" in proc.stderr


# -- issue 23: what the publish command writes, and what it leaves behind ---------------

#: a password every format escapes: non-ASCII, both quotes, a backslash, ':', '@', '%'
AWKWARD = "Zürich\"'\\:@% x-" + "k7Qm2vR9pL4sT8wN"


def _encodings_of(value: str) -> set[str]:
    """The ways a reader of any --publish-format could echo *value* (the test's own list)."""
    as_json = json.dumps(value)[1:-1]
    return {
        value,
        as_json,
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(as_json)[1:-1],  # the document inside the k8s Secret
        shlex.quote(value),
        quote(value, safe=""),
        value.replace("\\", "\\\\").replace(":", "\\:"),
        base64.b64encode(value.encode()).decode(),
    }


@pytest.mark.parametrize("fmt", ["json", "k8s-secret", "env", "pgpass", "url"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json-output", "text-output"])
def test_a_failed_publish_that_echoes_its_input_shows_no_encoding_of_a_password(
    project: Project, fmt: str, as_json: bool
) -> None:
    """Finding 3: the command read the rendered document, where the password is
    escaped; echoed back, no rendering of it reaches rolekit's message or event."""
    project.set_password("my_app_tom", "dev", AWKWARD)
    project.upgrade("dev")
    assert _auto(project, "--max-age", "0", "--publish", "cat > /dev/null; exit 7")[0] == 1
    # begun: the incoming member (the one url carries) gets an awkward password too
    project.cluster.set_password("my_app_jerry", AWKWARD[::-1])
    project.set_password("my_app_jerry", "dev", AWKWARD[::-1])
    # every line of the document on one line of stderr, long lines cut to the part with the password
    # (and a URL without its scheme, as a tool naming where it connected would)
    echo = (
        "cat | grep -i -e password -e my_app_ | sed 's,postgresql://,,' | cut -c1-250 >&2; exit 3"
    )
    args = [a for a in AUTO if a != "--json" or as_json]
    proc = project.rolekit(*args, "--max-age", "0", "--publish-format", fmt, "--publish", echo,
                           check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (error_line,) = [line for line in proc.stderr.splitlines() if line.startswith("rolekit: error")]
    assert "<redacted>" in error_line  # the lines that held it were shown, masked
    shown = proc.stdout + proc.stderr
    for role in ("my_app_tom", "my_app_jerry"):
        for encoding in _encodings_of(password(project, role)):
            assert encoding not in shown, (fmt, encoding)
    for fragment in ("Z\\u00fcrich", "Zürich", "Z%C3%BCrich"):
        assert fragment not in shown
    if as_json:
        error = json.loads(proc.stdout.splitlines()[-1])
        assert error["event"] == "error" and error["error"] in error_line


def test_a_publish_killed_by_a_signal_is_reported_as_such(project: Project) -> None:
    """Finding 15."""
    project.upgrade("dev")
    code, events = _auto(project, "--max-age", "0", "--publish", "cat > /dev/null; kill -9 $$")
    assert code == 1
    assert "--publish killed by signal 9 (SIGKILL)" in events[-1]["error"]
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}


@contextlib.contextmanager
def _grandchild(project: Project) -> Any:
    """A publish command that leaves a process of its own running (``sleep 300 &``);
    yields the command and a reader of that process's pid, and kills it if a test failed."""
    pid_file = project.root / "grandchild.pid"
    started: list[int] = []

    def pid() -> int:
        _wait_for(pid_file)
        started.append(int(pid_file.read_text()))
        return started[-1]

    try:
        yield f"sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}; ", pid
    finally:
        for leftover in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


@pytest.mark.parametrize("where", ["option", "setting"])
def test_a_publish_past_its_timeout_is_ended_with_every_process_it_started(
    project: Project, where: str
) -> None:
    """Finding 9: the timeout ends the command's whole process group; it is
    --publish-timeout or [rolekit] publish_timeout."""
    project.upgrade("dev")
    if where == "setting":
        ini = project.root / "alembic.ini"
        ini.write_text(ini.read_text().replace("[rolekit]\n", "[rolekit]\npublish_timeout = 2\n"))
    timeout = ("--publish-timeout", "2") if where == "option" else ()
    with _grandchild(project) as (spawn, pid):
        began = time.monotonic()
        code, events = _auto(
            project, "--max-age", "0", *timeout, "--publish", spawn + "cat >/dev/null; sleep 300"
        )
        assert code == 1
        assert "did not finish within 2s" in events[-1]["error"]
        assert time.monotonic() - began < 60
        assert gone(pid())
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": True}  # the overlap stays


def test_sigterm_to_rolekit_ends_every_process_of_the_publish_command(project: Project) -> None:
    """Finding 9: a cancelled CI job leaves nothing behind that holds the credentials."""
    project.upgrade("dev")
    shell_pid = project.root / "publish.pid"
    with _grandchild(project) as (spawn, pid):
        run = _spawn_auto(project, f"{spawn}echo $$ > {shell_pid}; cat >/dev/null; sleep 300")
        grandchild = pid()
        _wait_for(shell_pid)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 143, err
        assert gone(grandchild) and gone(int(shell_pid.read_text()))


def test_a_process_left_running_by_a_successful_publish_is_ended(project: Project) -> None:
    """Finding 9: no child of a publish can publish after a newer run."""
    project.upgrade("dev")
    with _grandchild(project) as (spawn, pid):
        code, events = _auto(project, "--max-age", "0", "--publish", spawn + PUBLISH)
        assert code == 0, events
        assert gone(pid())


#: runs the command in its argv and prints the largest resident set (KiB) of its process tree
_MAX_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def test_a_publish_command_printing_hundreds_of_megabytes_costs_no_memory(
    project: Project,
) -> None:
    """Finding 14: its stdout is discarded unread, and only a tail of its stderr is kept."""
    project.upgrade("dev")
    megabytes = 200
    noisy = (f"cat >/dev/null; yes stdout | head -c {megabytes}M; "
             f"yes 'stderr line' | head -c {megabytes}M >&2; echo 'the real error' >&2; exit 1")  # fmt: skip
    proc = project.run(sys.executable, "-c", _MAX_RSS, sys.executable, "-m", "rolekit.cli", *AUTO,
                       "--max-age", "0", "--publish", noisy)  # fmt: skip
    *_, error, max_rss_kib = proc.stdout.splitlines()
    assert "the real error" in json.loads(error)["error"]
    assert int(max_rss_kib) < megabytes * 1024 / 2, f"{int(max_rss_kib) // 1024} MiB"


def test_pgbouncer_format_without_a_superuser_is_refused_before_begin(
    managed_project: Project,
) -> None:
    """Finding 18: its needs are checked before anything changes; every re-run
    refuses the same way, and nothing was begun."""
    project = managed_project
    project.upgrade("dev")
    before, state = role_snapshot(project.cluster), project.state()
    for _ in range(2):
        code, events = _auto(project, "--max-age", "0", "--publish-format", "pgbouncer",
                             "--publish", PUBLISH)  # fmt: skip
        assert code == 3, events
        assert "needs a superuser" in events[-1]["error"]
        assert "Nothing was changed" in events[-1]["error"]
        assert role_snapshot(project.cluster) == before and project.state() == state
    assert not (project.root / "published.json").exists()


def test_url_format_without_a_host_is_refused_before_begin(any_project: Project) -> None:
    """Finding 18: a database URL whose host is only in its query string gives
    the url format no host: refused before begin, nothing changed."""
    project = any_project
    project.upgrade("dev")
    cluster = project.cluster
    hostless = project.url.replace(f"@{cluster.host}:{cluster.port}/", "@/")
    hostless += f"?host={cluster.host}&port={cluster.port}"
    before, state = role_snapshot(cluster), project.state()
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish-format", "url",
                           "--publish", PUBLISH, check=False, DATABASE_URL=hostless)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--format url needs the database host" in proc.stderr
    assert role_snapshot(cluster) == before and project.state() == state


def test_a_format_that_fails_to_render_after_begin_is_a_failed_publish(project: Project) -> None:
    """Finding 18: once begun, a rendering that fails is a failed publish: exit 1,
    still in the overlap (no outage), and the next run publishes again."""
    project.upgrade("dev")
    code, _ = _auto(project, "--max-age", "0", "--publish", "cat > /dev/null; exit 7")
    assert code == 1  # begun, in the overlap
    on_file = password(project, "my_app_jerry")
    project.set_password("my_app_jerry", "dev", "not-the-one-the-server-has-4711")
    code, events = _auto(project, "--max-age", "90d", "--publish-format", "pgbouncer",
                         "--publish", PUBLISH)  # fmt: skip
    assert code == 1, events
    assert "--publish-format pgbouncer" in events[-1]["error"]
    assert "stays in the overlap" in events[-1]["error"]
    project.set_password("my_app_jerry", "dev", on_file)
    code, events = _auto(project, "--max-age", "90d", "--publish-format", "pgbouncer",
                         "--publish", PUBLISH)  # fmt: skip
    assert code == 0 and events[-1]["result"] == "resumed"
