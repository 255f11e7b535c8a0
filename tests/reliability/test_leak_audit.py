"""Leak audit: run everything with every log turned up, then look for secrets.

``log_statement=all`` on the server, SQLAlchemy's engine logger (echo) and
every other logger at DEBUG: init, upgrades, rotations, error paths (bad
secrets, a drain timeout, a failing repeatable, a failed login check),
offline ``--sql``, downgrade.  Every plaintext the secrets files ever held
and every verifier the server ever stored (read from ``pg_authid`` after
each step) is then searched for in the server log, everything alembic and
rolekit printed, the changelog tables and the project's files.

A superuser migration user switches statement logging off around the
``ALTER ROLE ... PASSWORD``, so nothing may be found anywhere.  A
non-superuser that may not do so is refused instead (tests/guards); here it
runs as on a managed service, whose statements are not logged, so nothing may
be found anywhere either.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from rolekit.testing import Project
from tests.plugins.reliability import Counts
from tests.reliability.helpers import (
    changelog_text,
    cli,
    family_verifiers,
    find_leaks,
    project_files,
    verifier_needles,
)


def debug_logging(project: Project) -> None:
    """Every logger and handler of the copied alembic.ini at DEBUG, including
    ``sqlalchemy.engine`` (the same as ``echo="debug"``: statements,
    parameters and rows)."""
    ini = project.root / "alembic.ini"
    text, n = re.subn(r"^level = \w+$", "level = DEBUG", ini.read_text(), flags=re.M)
    assert n >= 4 and "qualname = sqlalchemy.engine" in text
    ini.write_text(text)


class Audit:
    """Collects every secret in use while the steps run."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.plaintexts: dict[str, str] = {}
        self.verifiers: dict[str, str] = {}
        self.steps: list[str] = []

    def collect(self) -> None:
        for path in sorted(self.project.root.glob("passwords*.env")):
            for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep and value.strip("'\" ") and not key.lstrip().startswith("#"):
                    self.plaintexts.setdefault(value.strip("'\" "), f"{path.name}: {key.strip()}")
        for name, value in self.project.passwords.items():
            self.plaintexts.setdefault(value, f"generated {name}")
        migrator = make_url(self.project.url).password
        if migrator:
            self.plaintexts.setdefault(migrator, "migration user's password")
        self.plaintexts.setdefault(self.project.cluster.superuser_password, "superuser password")
        self.verifiers.update(family_verifiers(self.project, "my_app%"))

    def step(self, name: str, action: Callable[[], object]) -> None:
        self.steps.append(name)
        action()
        self.collect()


def _bad_secrets(audit: Audit, path: Path) -> None:
    """Broken secrets files: each refused, nothing printed from them."""
    good = path.read_bytes()
    cases = {
        "too-short": "my_app_jerry.password.dev=Qj7short\n",
        "duplicate": "my_app_jerry.password.dev=Qj7DupOne-0123456789abcdef\n"
        "my_app_jerry.password.dev=Qj7DupTwo-0123456789abcdef\n",
        "pasted-alone": "Qj7PastedAloneOnALine-0123456789\n",
        "unterminated": "my_app_jerry.password.dev='Qj7Unterminated-0123456789\n",
    }
    for case, extra in cases.items():
        for token in re.findall(r"Qj7[\w-]+", extra):
            audit.plaintexts[token] = f"bad secret ({case})"
        kept = [
            line
            for line in good.decode().splitlines(keepends=True)
            if not line.startswith("my_app_jerry.password.dev=")
        ]
        path.write_text("".join(kept) + extra)
        result = audit.project.upgrade("dev", check=False)
        assert result.returncode != 0, case
    path.write_bytes(good)


def _run_everything(audit: Audit) -> None:
    project = audit.project
    cluster = project.cluster
    secrets_path = project.root / "passwords.env"
    debug_logging(project)
    audit.collect()
    step = audit.step

    step(
        "init",
        lambda: [
            project.rolekit("gen-password", role, "--context", "dev", "--write")
            for role in ("my_app_tom", "my_app_jerry")
        ],
    )
    step("upgrade dev", lambda: project.upgrade("dev"))
    step(
        "plan/status/check",
        lambda: [
            project.rolekit("plan", "--context", "dev"),
            project.rolekit("status", "--context", "dev", "--json", check=False),
            project.rolekit("check", "--context", "dev", check=False),
        ],
    )
    step(
        "rotate begin",
        lambda: project.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply"),
    )

    # The drain guard times out while an application holds the old member.
    tom = project.secrets.get("my_app_tom", "dev").reveal()
    with contextlib.closing(cluster.connect("my_app_tom", tom, application_name="audit-app")):
        step(
            "drain timeout",
            lambda: _expect_failure(
                project.rolekit(
                    "rotate",
                    "my_app",
                    "finish",
                    "--context",
                    "dev",
                    "--apply",
                    "--drain-timeout",
                    "1",
                    check=False,
                ),
                exit_code=3,
            ),
        )
    step(
        "rotate finish",
        lambda: project.rolekit(
            "rotate", "my_app", "finish", "--context", "dev", "--apply", "--drain-timeout", "10"
        ),
    )
    step("bad secrets", lambda: _bad_secrets(audit, secrets_path))

    # A repeatable fails after the new password was sent in the same transaction.
    boom = project.root / "migrations" / "repeatable" / "zz_boom.py"

    def failing_repeatable() -> None:
        project.rolekit("gen-password", "my_app_jerry", "--context", "dev", "--write")
        boom.write_text(
            "from rolekit.repeatable import Sql\nREPEATABLES = [Sql('boom', 'SELECT 1/0')]\n"
        )
        _expect_failure(project.upgrade("dev", check=False))
        boom.unlink()
        project.upgrade("dev")

    step("failing repeatable", failing_repeatable)

    # The login check after the commit fails (the member may not connect).
    def failed_login_check() -> None:
        project.query("ALTER ROLE my_app_jerry CONNECTION LIMIT 0")
        project.rolekit("gen-password", "my_app_jerry", "--context", "dev", "--write")
        result = project.upgrade("dev", check=False)
        _expect_failure(result)
        assert "login check failed" in result.stdout + result.stderr
        project.query("ALTER ROLE my_app_jerry CONNECTION LIMIT -1")

    step("failed login check", failed_login_check)
    step(
        "offline --sql",
        lambda: [
            project.alembic("upgrade", "head", "--sql", x={"pg_version": "15"}),
            _expect_failure(
                project.alembic(
                    "upgrade", "head", "--sql", context="dev", x={"pg_version": "15"}, check=False
                )
            ),
        ],
    )
    step(
        "creds (the one command that prints a password)",
        lambda: cli(project, "creds", "my_app", "--context", "dev", "--json", record=False),
    )
    step("downgrade", lambda: project.downgrade(x={"terminate": "true"}))
    step("upgrade local", lambda: project.upgrade("local"))
    step(
        "rotate local",
        lambda: [
            project.rolekit("rotate", "my_app", phase, "--context", "local", "--apply")
            for phase in ("begin", "finish")
        ],
    )


def _expect_failure(result: object, exit_code: int | None = None) -> None:
    code = result.returncode  # type: ignore[attr-defined]
    assert code != 0 and (exit_code is None or code == exit_code), result


def _search(audit: Audit, counts: Counts) -> tuple[list[str], list[str]]:
    """(plaintext hits, verifier hits) as ``"<what> in <place>"``."""
    project = audit.project
    places = {"server log": project.cluster.log_text(), "changelog tables": changelog_text(project)}
    places.update({f"output {n}": text for n, text in enumerate(project.outputs)})
    places.update(project_files(project))
    plaintexts = {
        f"{what} (#{n})": value for n, (value, what) in enumerate(audit.plaintexts.items())
    }
    verifiers = {
        f"{name} part {i}": needle
        for name, value in audit.verifiers.items()
        for i, needle in enumerate(verifier_needles(value))
    }
    assert len(audit.verifiers) >= 6, audit.verifiers  # several passwords per member
    assert len(plaintexts) >= 15, plaintexts
    counts.secrets_searched += len(plaintexts) + len(audit.verifiers)
    counts.leak_checks += len(places) * (len(plaintexts) + len(verifiers))
    print(
        f"\nleak audit ({project.user}): {len(audit.steps)} steps, {len(plaintexts)} plaintexts, "
        f"{len(audit.verifiers)} verifiers, {len(places)} places"
    )
    return find_leaks(places, plaintexts), find_leaks(places, verifiers)


@pytest.mark.slow
def test_leak_audit_superuser(project: Project, counts: Counts) -> None:
    audit = Audit(project)
    _run_everything(audit)
    plaintext_hits, verifier_hits = _search(audit, counts)
    counts.leak_hits += len(plaintext_hits) + len(verifier_hits)
    assert not plaintext_hits, plaintext_hits
    assert not verifier_hits, verifier_hits
    assert "PASSWORD <redacted>" in "\n".join(project.outputs)


@pytest.mark.slow
def test_leak_audit_non_superuser(managed_project: Project, counts: Counts) -> None:
    audit = Audit(managed_project)
    _run_everything(audit)
    plaintext_hits, verifier_hits = _search(audit, counts)
    outside_log = [hit for hit in verifier_hits if not hit.endswith(" in server log")]
    counts.leak_hits += len(plaintext_hits) + len(verifier_hits)
    assert not plaintext_hits, plaintext_hits
    assert not outside_log, outside_log
    assert not verifier_hits, verifier_hits


@pytest.mark.parametrize(
    "setting",
    ["log_min_duration_statement = 0", "log_transaction_sample_rate = 1"],
)
def test_superuser_verifier_stays_out_of_other_statement_logs(
    project: Project, counts: Counts, setting: str
) -> None:
    """Statement logging has more switches than ``log_statement``: the
    duration log and transaction sampling also print statement text."""
    conn = project.cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER SYSTEM SET {setting}")
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()
    audit = Audit(project)
    audit.step("upgrade dev", lambda: project.upgrade("dev"))
    audit.step(
        "rotate begin",
        lambda: project.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply"),
    )
    log = project.cluster.log_text()
    hits = find_leaks(
        {"server log": log},
        {
            f"{name} part {i}": needle
            for name, value in audit.verifiers.items()
            for i, needle in enumerate(verifier_needles(value))
        },
    )
    hits += find_leaks(
        {"server log": log},
        {f"{what} (#{n})": value for n, (value, what) in enumerate(audit.plaintexts.items())},
    )
    counts.secrets_searched += len(audit.verifiers) + len(audit.plaintexts)
    counts.leak_hits += len(hits)
    assert audit.verifiers
    assert not hits, hits
