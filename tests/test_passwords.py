"""Passwords end to end: client-side SCRAM, no leaks, bad secrets refused, age."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot


def verifiers(project: Project) -> list[str]:
    """The SCRAM verifiers the server stores for the family (superuser read)."""
    rows = project.query(
        "SELECT rolpassword FROM pg_authid WHERE rolname LIKE 'my_app%%' AND rolpassword IS NOT NULL"
    )
    return [r[0] for r in rows]


def debug_logging(project: Project) -> None:
    """SQLAlchemy echo and DEBUG everywhere: the leak checks must hold even so."""
    ini = project.root / "alembic.ini"
    text = (
        ini.read_text()
        .replace("level = WARNING", "level = DEBUG")
        .replace("level = INFO", "level = DEBUG")
    )
    ini.write_text(text)


def test_no_secret_in_server_log_output_or_changelog(any_project: Project) -> None:
    project = any_project
    debug_logging(project)
    project.upgrade("dev")
    project.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply")
    project.passwords["jerry.new"] = project.secrets.get("my_app_jerry", "dev").reveal()
    project.rolekit("rotate", "my_app", "finish", "--context", "dev", "--apply")
    project.rolekit("status", "--context", "dev", check=False)
    project.alembic("upgrade", "head", "--sql", x={"pg_version": "15"})
    project.downgrade(x={"terminate": "true"})
    project.upgrade("dev")
    stored = verifiers(project)
    assert stored and all(v.startswith("SCRAM-SHA-256$") for v in stored)
    log = project.cluster.log_text()
    outputs = "\n".join(project.outputs)
    changelog = json.dumps(project.query("SELECT * FROM rolekit_changelog"), default=str)
    changelog += json.dumps(project.query("SELECT * FROM rolekit_changelog_history"), default=str)
    for password in project.passwords.values():
        assert password not in log
        assert password not in outputs
        assert password not in changelog
    for verifier in stored:
        secret_part = verifier.split("$", 2)[2]
        assert secret_part not in outputs and secret_part not in changelog
        if project.user == "postgres":
            # A superuser may switch statement logging off around the ALTER ROLE.
            assert secret_part not in log
    assert "PASSWORD <redacted>" in outputs


def test_verify_after_setting_logs_in_as_member(project: Project) -> None:
    proc = project.upgrade("dev")
    assert "verified login as my_app_tom (session runs as my_app)" in proc.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "my_app_jerry.password.dev=Qj7JerryOnlyValue99\n",
            "my_app_tom.password.dev",
        ),  # tom missing
        ("my_app_tom.password.dev=\n", "empty"),
        ("my_app_tom.password.dev='Qj7Unterminated\n", "passwords.env:1: malformed line"),
        ("my_app_tom.password.dev=Qj7weak\n", "at least 16"),
    ],
    ids=["missing-key", "empty-value", "malformed-line", "too-weak"],
)
def test_bad_secrets_are_refused_before_any_change(
    project: Project, content: str, problem: str
) -> None:
    project.upgrade()
    before = role_snapshot(project.cluster)
    path = project.root / "passwords.env"
    path.write_text(content)
    path.chmod(0o600)
    proc = project.upgrade("dev", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert problem in proc.stderr
    assert "passwords.env" in proc.stderr and "dev" in proc.stderr
    assert "Qj7" not in proc.stdout + proc.stderr
    assert role_snapshot(project.cluster) == before


def test_git_tracked_plaintext_secrets_file_is_refused(project: Project) -> None:
    subprocess.run(["git", "init", "-q"], cwd=project.root, check=True)
    subprocess.run(["git", "add", "-f", "passwords.env"], cwd=project.root, check=True)
    proc = project.upgrade("dev", check=False)
    assert proc.returncode != 0 and "git" in proc.stderr and "passwords.env" in proc.stderr


def test_gen_password_writes_without_printing(project: Project) -> None:
    proc = project.rolekit("gen-password", "my_app_tom", "--context", "dev", "--write")
    value = project.secrets.get("my_app_tom", "dev").reveal()
    assert len(value) >= 32 and value not in proc.stdout + proc.stderr
    shown = project.rolekit(
        "gen-password", "my_app_tom", "--context", "dev", "--write", "--show", "--json"
    )
    assert json.loads(shown.stdout)["password"] == project.secrets.get("my_app_tom", "dev").reveal()


@pytest.fixture
def age_identity(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("age-keygen") is None:
        pytest.fail("the Debian package 'age' is required (make test installs it)")
    key = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return str(key)


def test_prod_with_age_encrypted_secrets(project: Project, age_identity: str) -> None:
    os.environ["ROLEKIT_AGE_IDENTITY_FILE"] = age_identity
    try:
        prod = project.root / "passwords.prod.env.age"
        recipient = subprocess.run(
            ["age-keygen", "-y", age_identity], capture_output=True, text=True, check=True
        ).stdout.strip()
        tom = "prod-" + "t" * 30
        subprocess.run(
            ["age", "-r", recipient, "-o", str(prod)],
            input=f"my_app_tom.password.prod={tom}\n",
            text=True,
            check=True,
        )
        project.passwords["tom.prod"] = tom
        project.upgrade("prod", ROLEKIT_AGE_IDENTITY_FILE=age_identity)
        project.cluster.connect("my_app_tom", tom).close()
        # A wrong identity fails clearly and changes nothing.
        wrong = str(prod.parent / "wrong.txt")
        subprocess.run(["age-keygen", "-o", wrong], check=True, capture_output=True)
        project.secrets  # noqa: B018
        before = role_snapshot(project.cluster)
        from rolekit.secrets import SecretsFile

        SecretsFile(prod).set("my_app_jerry", "prod", "jerry-" + "j" * 30)
        proc = project.upgrade("prod", check=False, ROLEKIT_AGE_IDENTITY_FILE=wrong)
        assert proc.returncode != 0 and "passwords.prod.env.age" in proc.stderr
        assert role_snapshot(project.cluster) == before
        assert tom not in "\n".join(project.outputs) and tom not in project.cluster.log_text()
    finally:
        del os.environ["ROLEKIT_AGE_IDENTITY_FILE"]
