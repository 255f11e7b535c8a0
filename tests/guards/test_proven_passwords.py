"""The pre-migration password check logs in only where the server cannot prove
the password on file without a login (issue 21's speed at scale).

A migration user that reads ``pg_authid`` (a superuser) skips the login of a
member while the server still stores the verifier rolekit set from the
password on file; anything else -- a password changed by hand, even to the
same text, a member whose history has no digest, the least-privileged
migrator -- logs in as before.  Every test runs with both migration users.
"""

from __future__ import annotations

import re

from rolekit.pg.tracking import OWN_LOGINS
from rolekit.testing import Project
from tests.guards.helpers import can_login, check, is_migrator, login_as, password


def _check_logins(project: Project, offset: int) -> list[str]:
    """Members rolekit logged in as since *offset* of the server log."""
    pattern = re.compile(
        rf"connection authorized: user=(\w+) database=\w+ application_name={OWN_LOGINS}"
    )
    return pattern.findall(project.cluster.log_since(offset))


def _migrator_reads_authid(project: Project) -> bool:
    return not is_migrator(project)


def test_a_noop_logs_in_only_where_the_server_cannot_prove_the_password(
    any_project: Project,
) -> None:
    project = any_project
    project.upgrade("dev")
    digests = project.query(
        "SELECT role, verifier IS NOT NULL FROM rolekit_password_history ORDER BY seq"
    )
    superuser = _migrator_reads_authid(project)
    # the digest is recorded only where the migrator may read pg_authid
    assert digests and all(has is superuser for _, has in digests), digests
    offset = project.cluster.log_size()
    proc = project.upgrade("dev")
    assert "] running " not in proc.stderr
    if superuser:
        assert _check_logins(project, offset) == []
        assert "need no login check" in proc.stderr
    else:
        assert _check_logins(project, offset) == ["my_app_tom"]
        assert "need no login check" not in proc.stderr
    # `rolekit check` (and status) proves passwords the same way
    offset = project.cluster.log_size()
    assert check(project).stdout.strip() == "no drift"
    assert _check_logins(project, offset) == ([] if superuser else ["my_app_tom"])


def test_a_password_set_by_hand_is_never_proven_even_to_the_same_text(
    any_project: Project,
) -> None:
    """The same password set again by hand gets a new salt: the server no longer
    stores rolekit's verifier, so the member logs in (and passes: no drift)."""
    project = any_project
    project.upgrade("dev")
    same = password(project, "my_app_tom")
    project.cluster.set_password("my_app_tom", same)
    offset = project.cluster.log_size()
    proc = project.upgrade("dev")
    assert _check_logins(project, offset) == ["my_app_tom"]
    assert "drift" not in proc.stderr and "] running " not in proc.stderr
    # changed to another text: the login finds the drift and the upgrade repairs it
    project.cluster.set_password("my_app_tom", "changed-by-hand-0123456789")
    offset = project.cluster.log_size()
    proc = project.upgrade("dev")
    assert "my_app_tom rejects the password in passwords.env: it drifted" in proc.stderr
    assert "my_app_tom" in _check_logins(project, offset)
    assert can_login(project) == {"my_app_tom": True, "my_app_jerry": False}
    assert check(project).stdout.strip() == "no drift"
    # the repair recorded the new verifier: the next no-op proves it again (superuser)
    offset = project.cluster.log_size()
    project.upgrade("dev")
    expected = [] if _migrator_reads_authid(project) else ["my_app_tom"]
    assert _check_logins(project, offset) == expected


def test_a_secrets_file_with_another_password_is_never_proven(any_project: Project) -> None:
    """The file's password is not the one the server's verifier was set from: the
    member logs in, is rejected, and the upgrade sends the file's password."""
    project = any_project
    project.upgrade("dev")
    new = project.set_password("my_app_tom", "dev")
    offset = project.cluster.log_size()
    proc = project.upgrade("dev")
    assert "my_app_tom" in _check_logins(project, offset)
    assert "my_app_tom rejects the password in passwords.env" in proc.stderr
    assert new not in proc.stderr
    login_as(project, "my_app_tom").close()
