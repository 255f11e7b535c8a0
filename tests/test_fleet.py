"""Many families on one database (issue 21): per-family rotations side by side.

Each test adds N families (``svc1`` .. ``svcN``, members ``svcN_a`` and
``svcN_b``, context dev) to the example project, runs the real CLI in
separate processes against a real cluster, and keeps one application per
family connecting with the credentials rolekit hands out (the state file's
preferred member, its password from the secrets file, read at every
connection, as ``rolekit.client`` does).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from rolekit.project.document import from_document
from rolekit.secrets import SecretsFile
from rolekit.testing import Project
from tests.gitops import checkout, checkout_with_remote, secrets_in_age

#: every family a test adds: svc1 .. svc8
FAMILIES = [f"svc{n}" for n in range(1, 9)]
#: options of a quick rotation: a short quiet period, a bounded wait
QUICK = ("--context", "dev", "--apply", "--json", "--quiet-period", "1", "--move-timeout", "60")


def cli(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "rolekit.cli", *args)


def members(family: str) -> tuple[str, str]:
    return f"{family}_a", f"{family}_b"


def handed_out(project: Project, family: str) -> tuple[str, str]:
    """The credentials an application of *family* is given now (``rolekit creds``)."""
    state = json.loads(project.state_path.read_text())["families"][family]["dev"]
    user = state.get("incoming") or state["login"][0]
    return user, SecretsFile(project.root / "passwords.env").get(user, "dev").reveal()


class App:
    """One application of *family*: connects with the handed-out credentials for every
    query (a pool recycling connections), recording every failed login."""

    def __init__(self, project: Project, family: str, interval: float = 0.2) -> None:
        self.project, self.family, self.interval = project, family, interval
        self.queries = 0
        self.failures: list[str] = []
        self.users: set[str] = set()
        self.stop = threading.Event()
        #: while set, the application keeps using the member it has (it "does not move")
        self.stuck = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        held: tuple[str, str] | None = None
        while not self.stop.is_set():
            user, secret = (
                held if self.stuck.is_set() and held else handed_out(self.project, self.family)
            )
            held = (user, secret)
            try:
                conn = self.project.cluster.connect(user, secret, application_name="fleet-app")
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    self.queries += 1
                    self.users.add(user)
                    if self.stuck.is_set():  # an app that does not move keeps a session
                        self.stop.wait(self.interval)
                finally:
                    conn.close()
            except psycopg2.Error as exc:
                self.failures.append(f"{user}: {str(exc).strip().splitlines()[0]}")
            self.stop.wait(self.interval)

    def __enter__(self) -> App:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)


@contextmanager
def apps(project: Project, families: Sequence[str]) -> Iterator[dict[str, App]]:
    with ExitStack() as stack:
        yield {f: stack.enter_context(App(project, f)) for f in families}


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def login_of(project: Project, family: str) -> dict[str, bool]:
    rows = project.query(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN (%s, %s)", members(family)
    )
    return dict(rows)  # type: ignore[arg-type]


def rotated(project: Project, family: str, before: dict[str, Any]) -> None:
    """*family* went one whole rotation past *before*: member ``_b`` alone logs in."""
    state = project.state()["families"][family]["dev"]
    assert state == {"login": [members(family)[1]], "serial": before.get("serial", 0) + 2}
    assert login_of(project, family) == {members(family)[0]: False, members(family)[1]: True}


def test_concurrent_rotations_of_different_families(any_project: Project) -> None:
    """Eight ``rotate svcN auto`` processes at once on one checkout: all exit 0, the
    state file holds all eight results, no application sees a failed login, and the
    finishes wait out their quiet periods side by side (not eight one after another)."""
    project = any_project
    project.add_families(FAMILIES)
    before = {f: project.state()["families"][f]["dev"] for f in FAMILIES}
    with apps(project, FAMILIES) as running:
        time.sleep(1)
        started = time.monotonic()
        procs = {
            f: project.spawn(*cli("rotate", f, "auto", "--max-age", "0", *QUICK)) for f in FAMILIES
        }
        outs = {f: p.communicate(timeout=300) for f, p in procs.items()}
        elapsed = time.monotonic() - started
        time.sleep(1)
    for family, proc in procs.items():
        assert proc.returncode == 0, f"{family}: {outs[family][1]}"
        assert events(outs[family][0])[-1] == {"event": "done", "result": "rotated"}
        rotated(project, family, before[family])
    for family, app in running.items():
        assert app.failures == [], f"{family}: {app.failures}"
        assert app.users == set(members(family)), app.users  # it did move
    drained = [o[1].count("drained (watched since before the run lock") for o in outs.values()]
    drains = "\n".join(
        line
        for o in outs.values()
        for line in o[1].splitlines()
        if "drain" in line or "lock" in line
    )
    assert sum(drained) == len(FAMILIES), drains  # every finish took its vigil's word
    assert elapsed < 60, elapsed


def clone(project: Project, root: Path) -> Project:
    """Another checkout of *project* against the same database, as a second CI
    runner or a teammate's machine has: its own state file and secrets file."""
    root.mkdir()
    # the secrets file first: it has its fingerprint key, so the copy adds none
    shutil.copy(project.root / "passwords.env", root / "passwords.env")
    return Project.copy(
        project.root,
        root,
        project.cluster,
        user=project.user,
        password=project.password,
        dbname=project.dbname,
        pythonpath=project.pythonpath,
        env=project.extra_env,
    )


def test_rotations_of_different_families_from_two_checkouts(
    any_project: Project, tmp_path: Path
) -> None:
    """Two checkouts rotate svc1 and svc2 at once against one database: both exit 0,
    and each family's application, following its own checkout's files, sees no
    failed login.  A rotation runs only its own family's repeatables: the other
    checkout's files are behind on the family it did not rotate.  That is still
    refused where it matters: a deploy from either checkout exits 3, names the
    family its files are behind on, and changes nothing."""
    project = any_project
    project.add_families(FAMILIES[:2])
    other = clone(project, tmp_path / "clone")
    before = {f: project.state()["families"][f]["dev"] for f in FAMILIES[:2]}
    with App(project, "svc1") as app1, App(other, "svc2") as app2:
        time.sleep(1)
        procs = {
            "svc1": project.spawn(*cli("rotate", "svc1", "auto", "--max-age", "0", *QUICK)),
            "svc2": other.spawn(*cli("rotate", "svc2", "auto", "--max-age", "0", *QUICK)),
        }
        outs = {f: p.communicate(timeout=300) for f, p in procs.items()}
        time.sleep(1)
    for family, proc in procs.items():
        assert proc.returncode == 0, f"{family}: {outs[family][1]}"
        assert events(outs[family][0])[-1] == {"event": "done", "result": "rotated"}
    rotated(project, "svc1", before["svc1"])
    rotated(other, "svc2", before["svc2"])
    for app in (app1, app2):
        assert app.failures == [], f"{app.family}: {app.failures}"
        assert app.users == set(members(app.family)), app.users
    catalog = {f: login_of(project, f) for f in FAMILIES[:2]}
    for behind, deployer in (("svc2", project), ("svc1", other)):
        deploy = deployer.upgrade("dev", check=False)
        assert deploy.returncode == 3, deploy.stderr
        assert f"stale for family '{behind}'" in deploy.stderr, deploy.stderr
        assert "behind" in deploy.stderr
    assert {f: login_of(project, f) for f in FAMILIES[:2]} == catalog


def test_same_family_still_excludes_across_checkouts_and_files_merge(
    any_project: Project, tmp_path: Path
) -> None:
    """Two runs of one family, from one checkout or from two: the second exits 4
    (the database's lock, whoever the migration user is); a dry run of another
    family meanwhile writes its own state without losing the first's."""
    project = any_project
    project.add_families(FAMILIES[:2])
    holder = project.spawn(
        *cli(
            "rotate",
            "svc1",
            "auto",
            "--max-age",
            "0",
            *QUICK[:-4],
            "--quiet-period",
            "30",
            "--move-timeout",
            "60",
        )
    )
    try:
        deadline = time.monotonic() + 60
        while project.state()["families"]["svc1"]["dev"].get("incoming") is None:
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = project.rolekit("rotate", "svc1", "auto", "--max-age", "0", *QUICK, check=False)
        assert second.returncode == 4, second.stderr
        assert "running on this checkout for svc1" in second.stderr
        elsewhere = clone(project, tmp_path / "clone").rolekit(
            "rotate", "svc1", "auto", "--max-age", "0", *QUICK, check=False
        )
        assert elsewhere.returncode == 4, elsewhere.stderr
        assert "another 'rolekit rotate svc1' is running against this database" in (
            elsewhere.stderr
        )
        other = project.rolekit("rotate", "svc2", "begin", "--context", "dev")
        assert other.returncode == 0
    finally:
        holder.terminate()
        holder.communicate(timeout=60)
    families = project.state()["families"]
    assert families["svc2"]["dev"]["incoming"] == "svc2_b"  # the dry run's begin
    assert families["svc1"]["dev"]["incoming"] == "svc1_b"  # the first run's begin, kept


ALL = ("rotate", "--all", "auto", *QUICK)


def test_all_keeps_only_the_family_whose_app_did_not_move_in_the_overlap(
    any_project: Project,
) -> None:
    """``rotate --all auto``: one begin upgrade for every family, each finishing on its
    own; the family whose app stays on the old member is named (exit 3) and left in the
    overlap, the others finish; a re-run completes it once the app moved."""
    project = any_project
    families = FAMILIES[:3]
    project.add_families(families)
    before = {f: project.state()["families"][f]["dev"] for f in families}
    with apps(project, families) as running:
        running["svc2"].stuck.set()
        time.sleep(1)
        args = (*ALL[:-2], "--move-timeout", "8")
        proc = project.rolekit(*args, "--max-age", "0", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "svc2 (dev) stay in the overlap" in proc.stderr
        said = events(proc.stdout)
        unnamed = [e for e in said if "family" not in e and e["event"] not in ("done", "error")]
        assert unnamed == []  # every event names its family
        begins = [e for e in said if e["event"] == "phase" and e["step"] == "begin"]
        assert sorted(e["family"] for e in begins) == ["my_app", *families]  # and the example's
        # one upgrade began all four; one each finished my_app, svc1 and svc3
        assert proc.stderr.count("Context impl") == 4, proc.stderr
        for family in ("svc1", "svc3"):
            rotated(project, family, before[family])
        stuck = project.state()["families"]["svc2"]["dev"]
        assert stuck["login"] == ["svc2_a", "svc2_b"] and stuck["incoming"] == "svc2_b"
        assert login_of(project, "svc2") == {"svc2_a": True, "svc2_b": True}
        running["svc2"].stuck.clear()
        again = project.rolekit(*ALL, "--max-age", "1h", check=False)
        assert again.returncode == 0, again.stderr
        assert events(again.stdout)[-1] == {
            "event": "done",
            "results": {
                "my_app": "not due",
                "svc1": "not due",
                "svc2": "resumed",
                "svc3": "not due",
            },
        }
        time.sleep(1)
    rotated(project, "svc2", before["svc2"])
    for family, app in running.items():
        assert app.failures == [], f"{family}: {app.failures}"


def test_all_killed_in_the_middle_is_completed_by_the_next_run(any_project: Project) -> None:
    """SIGKILL during the shared wait of ``--all`` (every family begun, none finished):
    the next run resumes and finishes every family."""
    project = any_project
    families = FAMILIES[:3]
    project.add_families(families)
    before = {f: project.state()["families"][f]["dev"] for f in families}
    with apps(project, families) as running:
        args = (*ALL[:-4], "--quiet-period", "30", "--move-timeout", "60")
        proc = project.spawn(*cli(*args, "--max-age", "0"))
        deadline = time.monotonic() + 120
        while not all(project.state()["families"][f]["dev"].get("incoming") for f in families):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1)
        proc.kill()
        proc.communicate(timeout=30)
        assert proc.returncode == -9
        again = project.rolekit(*ALL, "--max-age", "1h", check=False)
        assert again.returncode == 0, again.stderr
        assert events(again.stdout)[-1] == {
            "event": "done",
            "results": dict.fromkeys(["my_app", *families], "resumed"),
        }
        time.sleep(0.5)
    for family in families:
        rotated(project, family, before[family])
    for family, app in running.items():
        assert app.failures == [], f"{family}: {app.failures}"


def test_all_refuses_a_family_name_and_other_phases(project: Project) -> None:
    for args in (("rotate", "--all", "svc1", "auto"), ("rotate", "--all", "begin")):
        proc = project.rolekit(*args, "--context", "dev", check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Nothing was done" in proc.stderr
    proc = project.rolekit("rotate", "auto", "--context", "dev", check=False)
    assert proc.returncode == 2 and "needs a family and a phase" in proc.stderr


def test_a_use_after_the_drain_outside_the_run_lock_is_seen(project: Project) -> None:
    """The drain outside the run lock keeps watching while the finish waits for the lock:
    a session of the old member then makes the upgrade wait out the quiet period again
    (under the lock) instead of taking the earlier drain's word."""
    project.add_families(["svc1"])
    project.rolekit("rotate", "svc1", "begin", "--context", "dev", "--apply")
    holder = project.cluster.connect(application_name="other-deploy")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (0x726F6C656B6974,))
        finish = ("rotate", "svc1", "finish", "--context", "dev", "--apply", "--quiet-period", "2")
        proc = project.spawn(*cli(*finish, "--drain-timeout", "60"))
        time.sleep(5)  # drained (2 s) and waiting for the run lock
        assert proc.poll() is None
        old = members("svc1")[0]
        secret = SecretsFile(project.root / "passwords.env").get(old, "dev").reveal()
        late = project.cluster.connect(old, secret, application_name="late-app")
        time.sleep(1.5)  # seen by the watch's sampling
        late.close()
    finally:
        holder.close()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stderr.count("drain: watching") == 2, stderr  # before the lock, and again under it
    assert "watched since before the run lock" not in stderr
    assert login_of(project, "svc1") == {"svc1_a": False, "svc1_b": True}


def test_all_publishes_each_family_and_commits_once_per_phase(project: Project) -> None:
    """One publish per family with its own credentials; ``--git-commit``: one commit for
    the begin and one for the finishes, naming every family, holding only the state file."""
    families = FAMILIES[:2]
    project.add_families(families)
    root = project.root
    git = checkout(project, "passwords.env\npub.*.json\n*.lock\n__pycache__/\n")
    publish = 'cat > "pub.$$.json"'
    proc = project.rolekit(
        *ALL, "--max-age", "0", "--publish", publish, "--git-commit", check=False
    )
    assert proc.returncode == 0, proc.stderr
    published = sorted(
        from_document(path.read_text(), path.name).preferred[0] for path in root.glob("pub.*.json")
    )
    assert published == ["my_app_jerry", "svc1_b", "svc2_b"]
    log = git("log", "--format=%s", "-n", "3").splitlines()
    assert log == [
        "rolekit: rotate my_app, svc1, svc2 (dev): finish",
        "rolekit: rotate my_app, svc1, svc2 (dev): begin",
        "start",
    ]
    for rev in ("HEAD", "HEAD~1"):
        assert git("show", "--name-only", "--format=", rev).split() == ["migrations/rotation.json"]
    assert git("status", "--porcelain") == ""


def test_all_without_apply_only_reads(project: Project) -> None:
    project.add_families(["svc1"])
    state = project.state()
    proc = project.rolekit(
        "rotate", "--all", "auto", "--context", "dev", "--json", "--max-age", "0"
    )
    said = events(proc.stdout)
    assert said[-1] == {
        "event": "done",
        "results": {"my_app": "would rotate", "svc1": "would rotate"},
    }
    assert {e["family"] for e in said if e["event"] == "dry run"} == {"my_app", "svc1"}
    assert project.state() == state
    assert login_of(project, "svc1") == {"svc1_a": True, "svc1_b": False}


def test_all_pushes_each_phase_and_a_failed_publish_keeps_only_its_family(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--all --git-push`` with a publish that fails for svc2 alone: the remote gets
    one begin commit for every family (their new passwords in the age file) and one
    finish commit for the others; svc2 stays in the overlap (exit 1, named), and the
    output never holds its new password, although the failing command echoes its
    input.  A re-run with a working publish completes svc2 and pushes its finish."""
    project.add_families(FAMILIES[:2])
    age = secrets_in_age(project, monkeypatch)
    project.upgrade("dev")
    root = project.root
    git, remote = checkout_with_remote(project, "passwords.env\npub.*.json\n*.lock\n__pycache__/\n")
    publish = (
        'doc=$(cat); case "$doc" in *svc2_b*) printf "denied: %s" "$doc" >&2; exit 1;; esac; '
        'printf "%s" "$doc" > "pub.$$.json"'
    )
    push = ("--publish", publish, "--git-push")
    proc = project.rolekit(*ALL, "--max-age", "0", *push, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "svc2 (dev) stay in the overlap" in proc.stderr
    finished = proc.stderr.rsplit("Finished: ", 1)[1].strip()
    assert sorted(finished.split(", ")) == ["my_app", "svc1"]  # in the order they drained
    incoming = age.get("svc2_b", "dev").reveal()
    assert incoming not in proc.stdout + proc.stderr
    assert login_of(project, "svc2") == {"svc2_a": True, "svc2_b": True}  # overlap: no outage

    def pushed() -> list[str]:
        return git("--git-dir", str(remote), "log", "--format=%s", "main").splitlines()

    assert pushed() == [
        "rolekit: rotate my_app, svc1 (dev): finish",
        "rolekit: rotate my_app, svc1, svc2 (dev): begin",
        "start",
    ]
    begin = git("--git-dir", str(remote), "show", "--name-only", "--format=", "main~1")
    assert sorted(begin.split()) == ["dev.env.age", "migrations/rotation.json"]
    in_remote = root.parent / "pushed.env.age"
    in_remote.write_bytes(
        subprocess.run(
            ["git", "--git-dir", str(remote), "show", "main:dev.env.age"],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert SecretsFile(in_remote).get("svc2_b", "dev").reveal() == incoming

    works = ("--publish", 'cat > "pub.$$.json"', "--git-push")
    again = project.rolekit(*ALL, "--max-age", "1d", *works, check=False)
    assert again.returncode == 0, again.stderr
    assert events(again.stdout)[-1] == {
        "event": "done",
        "results": {"my_app": "not due", "svc1": "not due", "svc2": "resumed"},
    }
    assert pushed()[0] == "rolekit: rotate svc2 (dev): finish"
    assert login_of(project, "svc2") == {"svc2_a": False, "svc2_b": True}
    assert git("status", "--porcelain") == ""
