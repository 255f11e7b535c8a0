"""``rolekit rotate FAMILY auto``: a whole rotation from cron, resumable, one run at a time.

Each test runs the real CLI against a real cluster; the publish commands are
small shell commands that read the credentials from their stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pyrage import x25519

from rolekit.client._document import from_document
from rolekit.secrets import AGE_IDENTITY_FILE_ENV, SecretsFile
from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.deployment.helpers import Client, connect_as, wait_for_no_sessions
from tests.guards.helpers import can_login, password

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


@pytest.mark.parametrize("phase", list(KILL_POINTS))
def test_a_run_killed_with_sigkill_is_completed_by_the_next(project: Project, phase: str) -> None:
    """SIGKILL at each phase, then the next run (as cron would start it): the
    family ends steady on the new member, whose password on file works, and
    an application on the new member never fails meanwhile."""
    markers, busy = KILL_POINTS[phase]
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
        assert run.stderr is not None
        seen = []
        for marker in markers:
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
    root = project.root

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout

    (root / ".gitignore").write_text("passwords.env\npublished.json\n*.lock\n__pycache__/\n")
    git("init", "-q")
    git("-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "add", "-A")
    git("-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-qm", "start")
    env = {"GIT_AUTHOR_NAME": "rolekit", "GIT_AUTHOR_EMAIL": "rolekit@example.invalid",
           "GIT_COMMITTER_NAME": "rolekit", "GIT_COMMITTER_EMAIL": "rolekit@example.invalid"}  # fmt: skip
    proc = project.rolekit(
        *AUTO, "--max-age", "0", "--publish", PUBLISH, "--git-commit", check=False, **env
    )
    assert proc.returncode == 0, proc.stderr
    log = git("log", "--format=%s", "-n", "2").splitlines()
    assert log == ["rolekit: rotate my_app (dev): finish", "rolekit: rotate my_app (dev): begin"]
    for rev in ("HEAD", "HEAD~1"):
        assert git("show", "--name-only", "--format=", rev).split() == ["migrations/rotation.json"]
        assert password(project, "my_app_jerry") not in git("show", rev)
    assert git("status", "--porcelain") == ""  # the ignored plaintext secrets stay out


GIT_ENV = {"GIT_AUTHOR_NAME": "rolekit", "GIT_AUTHOR_EMAIL": "rolekit@example.invalid",
           "GIT_COMMITTER_NAME": "rolekit", "GIT_COMMITTER_EMAIL": "rolekit@example.invalid"}  # fmt: skip


def _checkout_with_remote(project: Project, ignore: str) -> tuple[Any, Path]:
    """The project as a clone of a bare repository (what a CI job checks out)."""
    root, remote = project.root, project.root.parent / f"{project.root.name}-remote.git"

    def git(*args: str, cwd: Path = root) -> str:
        return subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **GIT_ENV},
        ).stdout

    (root / ".gitignore").write_text(ignore)
    git("init", "-q", "--bare", str(remote), cwd=root.parent)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "start")
    git("remote", "add", "origin", str(remote))
    git("push", "-q", "-u", "origin", "main")
    return git, remote


def test_git_push_refuses_a_secrets_file_git_ignores_before_any_change(project: Project) -> None:
    project.upgrade("dev")
    _checkout_with_remote(project, "passwords.env\npublished.json\n*.lock\n__pycache__/\n")
    before, state = role_snapshot(project.cluster), project.state()
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", PUBLISH, "--git-push",
                           check=False, **GIT_ENV)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "git ignores passwords.env" in proc.stderr and "age file" in proc.stderr
    assert role_snapshot(project.cluster) == before and project.state() == state
    assert not (project.root / "published.json").exists()


def _dev_secrets_in_age(project: Project, monkeypatch: pytest.MonkeyPatch) -> SecretsFile:
    """dev's passwords in an age file (what --git-push needs), the rest as it was."""
    identity = project.root.parent / f"{project.root.name}-identity.txt"
    identity.write_text(str(x25519.Identity.generate()) + "\n")
    identity.chmod(0o600)
    monkeypatch.setenv(AGE_IDENTITY_FILE_ENV, str(identity))
    project.extra_env[AGE_IDENTITY_FILE_ENV] = str(identity)
    ini = project.root / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "secrets = passwords.env\n", "secrets = passwords.env\nsecrets.dev = dev.env.age\n"
        )
    )
    age = SecretsFile(project.root / "dev.env.age")
    for role in ("my_app_tom", "my_app_jerry"):
        age.set(role, "dev", project.secret_of(role))
    age.ensure_fingerprint_key()
    return age


IGNORED = "passwords.env\npublished.json\nremote-at-publish.txt\n*.lock\n__pycache__/\n"


def test_git_push_pushes_each_phase_before_publishing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout that vanishes (CI, CronJob): the remote has each phase, with the
    new password in the age file, before the apps are given it."""
    age = _dev_secrets_in_age(project, monkeypatch)
    project.upgrade("dev")
    git, remote = _checkout_with_remote(project, IGNORED)
    # the publish command records what the remote had when it ran
    seen = project.root / "remote-at-publish.txt"
    publish = f"git --git-dir={remote} log --format=%s -n 1 main > {seen}; {PUBLISH}"
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", publish, "--git-push", **GIT_ENV)
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
    _dev_secrets_in_age(project, monkeypatch)
    project.upgrade("dev")
    _, remote = _checkout_with_remote(project, IGNORED)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\necho 'branch protected: https://ci:t0ken-4711@git.example/' >&2\nexit 1\n"
    )
    hook.chmod(0o755)
    proc = project.rolekit(*AUTO, "--max-age", "0", "--publish", PUBLISH, "--git-push",
                           check=False, **GIT_ENV)  # fmt: skip
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
