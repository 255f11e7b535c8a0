"""``rolekit init``: rolekit added to Alembic projects that had none, then used for real.

Each project starts as ``alembic init`` leaves it (templates ``generic`` and
``async``, or with an env.py a user changed), inside a git repository with
a ``.gitignore`` as Python projects have one.  After ``rolekit init
--family`` the commands a user runs next must work against a real server:
``alembic upgrade head`` and ``rolekit rotate my_app auto --max-age 0 --apply``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from rolekit.scaffold._envpy import ENV_PY, IMPORT_LINE
from rolekit.testing import Cluster, Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import can_login
from tests.plugins.postgres import REPO, TEST_QUIET_PERIOD

FAMILY = ("--family", "my_app", "--members", "my_app_tom,my_app_jerry")
GIT_ID = ("-c", "user.email=ci@example.invalid", "-c", "user.name=ci")


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_project(
    root: Path, cluster: Cluster | None = None, template: str = "generic", **kw: Any
) -> Project:
    """``alembic init -t TEMPLATE migrations`` in a git repository, committed."""
    root.mkdir(parents=True, exist_ok=True)
    env = {"ROLEKIT_DRAIN_QUIET_PERIOD": TEST_QUIET_PERIOD, "ROLEKIT_CONTEXT": "dev"}
    kw.setdefault("in_process", True)
    project = Project(root, cluster or _NO_CLUSTER, env=env, pythonpath=[REPO], **kw)
    project.alembic("init", "-t", template, "migrations")
    (root / ".gitignore").write_text("__pycache__/\n")
    git(root, "init", "-q")
    commit(root, "alembic init")
    return project


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, *GIT_ID, "commit", "-qm", message)


def tree(root: Path) -> dict[str, bytes]:
    """Every file of the project but git's own, for "nothing changed" checks."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def init(project: Project, *args: str, code: int = 0) -> dict[str, Any]:
    proc = project.rolekit("init", *args, "--json", check=False)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def actions(report: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["action"] for f in report["files"]}


class _NoCluster:
    """Stands in for a cluster in tests that never reach a server."""

    superuser, superuser_password = "nobody", None

    def url(self, *args: Any) -> str:
        return "postgresql+psycopg2://nobody@127.0.0.1:1/postgres"


_NO_CLUSTER: Any = _NoCluster()


# -- on a real server: init, upgrade, rotate ----------------------------------------


def _rotate_in_new_project(project: Project, **env: str) -> None:
    """What the README tells a new user: the first password, upgrade, rotate, downgrade."""
    project.rolekit("gen-password", "my_app_tom", "--context", "dev", "--write", **env)
    project.alembic("upgrade", "head", **env)
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": False}
    commit(project.root, "rolekit init and the first upgrade")
    proc = project.rolekit("rotate", "my_app", "auto", "--max-age", "0", "--apply", **env)
    assert "result=rotated" in proc.stdout, proc.stdout
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    # the run changed the state file and the (ignored) secrets file, nothing else
    assert git(project.root, "status", "--porcelain").split() == ["M", "migrations/rotation.json"]
    project.alembic("downgrade", "base", **env)


@pytest.mark.parametrize(
    ("template", "user", "in_process"),
    [
        ("generic", "superuser", False),  # real `alembic` and `rolekit` processes, once
        ("generic", "createrole", True),  # the README's least-privileged migrator
        ("pyproject", "superuser", True),  # script_location in pyproject.toml
    ],
)
def test_a_fresh_alembic_project_rotates_after_init(
    cluster: Cluster, tmp_path: Path, template: str, user: str, in_process: bool
) -> None:
    kw: dict[str, Any] = {"in_process": in_process}
    if user != "superuser":
        kw["user"], kw["password"] = cluster.create_migrator()
    project = new_project(tmp_path / "app", cluster, template, **kw)
    before = role_snapshot(cluster)
    report = init(project, *FAMILY)
    assert set(actions(report).values()) == {"create", "edit"}
    assert (project.root / "migrations" / "env.py").read_text() == ENV_PY
    _rotate_in_new_project(project)
    assert role_snapshot(cluster) == before


@pytest.mark.parametrize("template", ["async", "pyproject_async"])
def test_an_async_alembic_project_rotates_after_init(
    cluster: Cluster, tmp_path: Path, template: str
) -> None:
    """``alembic init -t async`` with an asyncpg URL: the application keeps asyncpg,
    rolekit's migrations and checks run through psycopg2."""
    project = new_project(tmp_path / "app", cluster, template=template)
    url = make_url(project.url).set(drivername="postgresql+asyncpg")
    report = init(project, *FAMILY)
    assert "async" in next(f["note"] for f in report["files"] if f["path"].endswith("env.py"))
    _rotate_in_new_project(project, DATABASE_URL=url.render_as_string(hide_password=False))


CUSTOMISED = """
import sqlalchemy as sa

# the project's models
target_metadata = sa.MetaData()
sa.Table("things", target_metadata, sa.Column("id", sa.Integer, primary_key=True))
"""


def _customise(project: Project) -> Path:
    env_py = project.root / "migrations" / "env.py"
    text = env_py.read_text().replace("target_metadata = None\n", CUSTOMISED)
    env_py.write_text(
        text.replace("connection=connection,", "connection=connection, compare_type=True,")
    )
    commit(project.root, "customised env.py")
    return env_py


def test_a_customised_env_py_is_changed_only_with_force(cluster: Cluster, tmp_path: Path) -> None:
    project = new_project(tmp_path / "app", cluster)
    env_py = _customise(project)
    files = tree(project.root)
    report = init(project, *FAMILY, code=3)
    assert tree(project.root) == files  # nothing written, not even the files without conflict
    [conflict] = [f for f in report["files"] if f["action"] == "conflict"]
    assert conflict["path"] == "migrations/env.py"
    assert f"+{IMPORT_LINE}\n" in conflict["diff"]
    assert "+run_migrations(context, target_metadata=target_metadata)\n" in conflict["diff"]
    assert "-if context.is_offline_mode():\n" in conflict["diff"]
    text = project.rolekit("init", *FAMILY, check=False).stdout
    assert "re-run with --force" in text and f"+{IMPORT_LINE}" in text

    init(project, *FAMILY, "--force")
    source = env_py.read_text()
    assert "target_metadata = sa.MetaData()" in source and "compare_type=True" in source
    _rotate_in_new_project(project)


MANUAL_ENV = """\
from logging.config import fileConfig
import os

from alembic import context
from sqlalchemy import create_engine, pool

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)
target_metadata = None


def main() -> None:
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


main()
"""


def test_an_env_py_rolekit_cannot_edit_gets_the_lines_and_where(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = new_project(tmp_path / "app", cluster)
    env_py = project.root / "migrations" / "env.py"
    env_py.write_text(MANUAL_ENV)
    proc = project.rolekit("init", *FAMILY, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert env_py.read_text() == MANUAL_ENV  # untouched, even with --force
    assert project.rolekit("init", *FAMILY, "--force", check=False).returncode == 1
    assert env_py.read_text() == MANUAL_ENV
    assert f"after line 5:\n      {IMPORT_LINE}" in proc.stdout
    assert "context.configure() is on line 15, context.run_migrations() on line 17" in proc.stdout
    assert "run_migrations(context, target_metadata=target_metadata)" in proc.stdout
    assert (project.root / "migrations" / "repeatable" / "my_app.py").exists()  # the rest is done
    # the user follows the instructions
    lines = MANUAL_ENV.splitlines(keepends=True)
    lines[-1] = "run_migrations(context, target_metadata=target_metadata)\n"
    lines.insert(5, IMPORT_LINE + "\n")
    env_py.write_text("".join(lines))
    report = init(project, *FAMILY)
    assert set(actions(report).values()) == {"unchanged"}
    _rotate_in_new_project(project)


# -- files only: no server ----------------------------------------------------------


def test_a_second_run_changes_nothing_and_says_so(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    first = init(project, *FAMILY)
    assert first["changed"] is True
    files = tree(project.root)
    second = project.rolekit("init", *FAMILY)
    assert "nothing to change: the project already has what rolekit needs" in second.stdout
    assert tree(project.root) == files
    report = init(project, *FAMILY)
    assert report["changed"] is False and set(actions(report).values()) == {"unchanged"}
    # without --family too
    assert set(actions(init(project)).values()) == {"unchanged"}


def test_init_without_a_family_prepares_the_project(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    report = init(project)
    assert actions(report) == {
        "migrations/env.py": "edit",
        "alembic.ini": "edit",
        "migrations/repeatable/README.md": "create",
        "migrations/rotation.json": "create",
        ".gitignore": "edit",
        "passwords.env.example": "create",
    }
    root = project.root
    assert json.loads((root / "migrations" / "rotation.json").read_text()) == {
        "version": 1,
        "families": {},
    }
    assert (root / ".gitignore").read_text().startswith("__pycache__/\n")  # kept, lines added
    ignored = ["passwords.env", "passwords.env.lock", "migrations/rotation.json.lock"]
    assert git(root, "check-ignore", *ignored).split() == ignored
    ini = (root / "alembic.ini").read_text()
    assert "[rolekit]\n" in ini and "repeatables = migrations/repeatable\n" in ini
    assert "keys = root,sqlalchemy,alembic,rolekit\n" in ini
    # a family later: only what it adds
    later = init(project, *FAMILY)
    changed = {path for path, action in actions(later).items() if action != "unchanged"}
    assert changed == {
        "migrations/rotation.json",
        "passwords.env.example",
        "migrations/repeatable/my_app.py",
        next(p for p in changed if p.startswith("migrations/versions/")),
    }


def test_the_family_files(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    init(project, *FAMILY, "--contexts", "dev,staging,prod")
    root = project.root
    state = json.loads((root / "migrations" / "rotation.json").read_text())
    assert state["families"]["my_app"] == {
        c: {"login": ["my_app_tom"]} for c in ("dev", "prod", "staging")
    }
    assert state["members"] == {"my_app": ["my_app_tom", "my_app_jerry"]}
    module = (root / "migrations" / "repeatable" / "my_app.py").read_text()
    for context in ("dev", "staging", "prod"):
        assert (
            f"SetPasswords('set_passwords_my_app_{context}', MEMBERS, context='{context}')"
            in module
        )
    assert "FamilyLogin('allow_login_for_my_app', 'my_app', MEMBERS)" in module
    [revision] = (root / "migrations" / "versions").glob("*.py")
    source = revision.read_text()
    assert "op.create_role_family('my_app', ['my_app_tom', 'my_app_jerry'])" in source
    assert "op.drop_role_family('my_app', ['my_app_tom', 'my_app_jerry'])" in source
    example = (root / "passwords.env.example").read_text()
    assert "my_app_jerry.password.staging=\n" in example
    # a second family revises the first one's revision
    init(project, "--family", "billing", "--members", "billing_a,billing_b")
    script = ScriptDirectory.from_config(Config(str(root / "alembic.ini")))
    [head] = [script.get_revision(h) for h in script.get_heads()]
    assert head is not None and head.doc == "create role family billing"
    assert head.down_revision == revision.name.split("_")[0]


def test_a_file_rolekit_did_not_write_is_replaced_only_with_force(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    mine = project.root / "migrations" / "repeatable" / "my_app.py"
    mine.parent.mkdir()
    mine.write_text("REPEATABLES = []  # mine\n")
    files = tree(project.root)
    report = init(project, *FAMILY, code=3)
    assert tree(project.root) == files
    [conflict] = [f for f in report["files"] if f["action"] == "conflict"]
    assert conflict["path"] == "migrations/repeatable/my_app.py"
    assert "-REPEATABLES = []  # mine\n" in conflict["diff"]
    dry = init(project, *FAMILY, "--force", "--dry-run")
    assert dry["applied"] is False and tree(project.root) == files
    init(project, *FAMILY, "--force")
    assert "FamilyLogin" in mine.read_text()


def test_dry_run_shows_every_change_and_writes_nothing(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    files = tree(project.root)
    proc = project.rolekit("init", *FAMILY, "--dry-run")
    assert tree(project.root) == files
    assert "dry run: nothing written" in proc.stdout
    assert "+run_migrations(context, target_metadata=target_metadata)" in proc.stdout
    assert "+op.create_role_family('my_app', ['my_app_tom', 'my_app_jerry'])" not in proc.stdout
    assert "op.create_role_family('my_app', ['my_app_tom', 'my_app_jerry'])" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--family", "my_app", "--members", "my_app_tom"), "--members needs two different roles"),
        (("--family", "my_app", "--members", "a,a"), "--members needs two different roles"),
        (("--family", "My-App", "--members", "a,b"), "family name 'My-App' is not allowed"),
        (("--family", "my_app", "--members", "a,b;drop"), "member name 'b;drop' is not allowed"),
        (("--members", "a,b"), "--members needs --family"),
        ((*FAMILY, "--contexts", "dev,pr od"), "context"),
        (("-c", "nowhere.ini"), "nowhere.ini does not exist"),
    ],
)
def test_bad_input_names_the_problem_and_changes_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    project = new_project(tmp_path / "app")
    files = tree(project.root)
    proc = project.rolekit("init", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert tree(project.root) == files


def test_members_that_differ_from_the_rotation_state_are_refused(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    init(project, *FAMILY)
    files = tree(project.root)
    proc = project.rolekit("init", "--family", "my_app", "--members", "a,b", check=False)
    assert proc.returncode == 2
    assert "already records the members my_app_tom, my_app_jerry" in proc.stderr
    assert tree(project.root) == files


def test_ignore_rules_git_already_applies_are_not_repeated(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    (project.root / ".gitignore").write_text("__pycache__/\n*.env\n*.lock\n")
    init(project)
    assert (project.root / ".gitignore").read_text() == "__pycache__/\n*.env\n*.lock\n"


def test_a_committed_secrets_file_is_reported(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    (project.root / "passwords.env").write_text("")
    commit(project.root, "oops")
    report = init(project)
    assert any("passwords.env is committed to git" in w for w in report["warnings"])


def test_a_project_with_several_heads_is_refused(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    project.alembic("revision", "-m", "one")
    project.alembic("revision", "-m", "two", "--head", "base", "--splice")
    files = tree(project.root)
    proc = project.rolekit("init", *FAMILY, check=False)
    assert proc.returncode == 2 and "merge them first" in proc.stderr
    assert tree(project.root) == files
