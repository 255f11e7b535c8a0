"""No verifier in a server log rolekit cannot quiet; no needless new verifier (finding 9)."""

from __future__ import annotations

from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import is_migrator, rotate

VERIFIER = "SCRAM-SHA-256$"


def _log_everything(project: Project) -> None:
    """The migrator's statements are logged (the server has log_statement = all)."""
    if is_migrator(project):
        project.query(f'ALTER ROLE "{project.user}" RESET log_statement')


def test_a_verifier_is_refused_where_the_log_cannot_be_quieted(any_project: Project) -> None:
    project = any_project
    _log_everything(project)
    before = role_snapshot(project.cluster)
    offset = project.cluster.log_size()
    proc = project.upgrade("dev", check=False)
    if is_migrator(project):
        assert proc.returncode != 0
        assert "refusing to send a password verifier" in proc.stderr
        assert "log_statement = 'all'" in proc.stderr
        assert "GRANT SET ON PARAMETER log_statement TO migrator" in proc.stderr
        assert role_snapshot(project.cluster) == before
    else:
        assert proc.returncode == 0, proc.stderr
    assert VERIFIER not in project.cluster.log_since(offset)


def test_the_documented_grant_is_enough(any_project: Project) -> None:
    """The README's GRANT SET ON PARAMETER: no verifier logged, even with log_statement=all."""
    project = any_project
    _log_everything(project)
    if is_migrator(project):
        project.query(
            f'GRANT SET ON PARAMETER log_statement, log_min_error_statement TO "{project.user}"'
        )
    offset = project.cluster.log_size()
    project.upgrade("dev")
    begun = rotate(project, "begin")
    assert "WARNING" not in begun.stderr
    logged = project.cluster.log_since(offset)
    assert "ALTER ROLE" in logged  # statements are logged, just not that one
    assert VERIFIER not in logged


def test_sending_a_logged_verifier_needs_an_explicit_opt_out(any_project: Project) -> None:
    project = any_project
    _log_everything(project)
    proc = project.alembic("upgrade", "head", context="dev", x={"allow_verifier_in_log": "true"})
    if is_migrator(project):
        assert "allow_verifier_in_log is set" in proc.stderr
    else:
        assert "allow_verifier_in_log is set" not in proc.stderr  # nothing to allow
    typo = project.alembic(
        "upgrade", "head", context="dev", x={"allow_verifier_in_log": "yes please"}, check=False
    )
    assert typo.returncode != 0 and "is not true or false" in typo.stderr


def _verifier(project: Project, role: str) -> str:
    return str(project.query("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))[0][0])


def test_a_file_gaining_its_key_sends_no_new_verifier_for_the_member_in_use(
    any_project: Project,
) -> None:
    """A hand-filled passwords.env has no fingerprint key; the first begin adds one.
    The member in use must keep its verifier (PgBouncer's SCRAM pass-through)."""
    project = any_project
    path = project.root / "passwords.env"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(x for x in lines if not x.startswith("rolekit.fingerprint_key=")))
    project.upgrade("dev")
    tom = _verifier(project, "my_app_tom")
    begun = rotate(project, "begin")
    assert "rolekit.fingerprint_key=" in path.read_text()
    assert "ALTER ROLE my_app_jerry PASSWORD <redacted>" in begun.stderr
    assert "ALTER ROLE my_app_tom PASSWORD" not in begun.stderr
    assert _verifier(project, "my_app_tom") == tom
