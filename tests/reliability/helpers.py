"""Shared machinery of the reliability suite.

* :func:`db_state` -- everything a run may change (roles, memberships,
  settings, password presence or verifier digests, schemas, grants, tables,
  ``alembic_version`` and both changelog tables), to compare before/after;
* :class:`Spawned` -- an ``alembic``/``rolekit`` process started in the
  background, so a test can kill it or break the server under it;
* :class:`LogTail` -- follows the server log (``log_statement=all``);
* :func:`cli` -- the ``rolekit`` command line run in-process (for commands
  that touch only files, where a subprocess would cost seconds);
* the second-family scenario (revision ``0003`` and a repeatables module
  whose pauses make faults land on different statements);
* :func:`find_leaks` -- searches texts for secrets.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2

from rolekit.testing import Cluster, Project
from tests.catalog_snapshot import role_snapshot

TRACEBACK = "Traceback (most recent call last)"
#: alembic's ``FAILED:`` line (on stdout; its log line on stderr) or the
#: rolekit CLI's ``rolekit: error:`` line; search stdout and stderr together
CLEAN_ERROR = re.compile(
    r"^(FAILED: |ERROR \[alembic\.util\.messaging\] |rolekit: (database )?error: )", re.M
)
#: what a message about a lost server connection says, in any of its forms
CONNECTION_LOST = re.compile(
    r"terminat|server closed the connection|connection (was )?(lost|closed|reset)"
    r"|could not (connect|receive)|shutting down|connection to server|cancel",
    re.I,
)


def tunable_sleep(name: str) -> str:
    """A pause whose length comes from ``PGOPTIONS=-c rolekit_test.<name>=S``:
    a re-run without the option runs the very same files without pausing."""
    return f"pg_sleep(coalesce(current_setting('rolekit_test.{name}', true), '0')::float)"


def slow_options(name: str, seconds: float = 60) -> dict[str, str]:
    """Environment that makes :func:`tunable_sleep` *name* pause."""
    return {"PGOPTIONS": f"-c rolekit_test.{name}={seconds}"}


# -- catalog and changelog ------------------------------------------------------


def _digest(value: str | None) -> str | None:
    """A short digest, so assertion diffs never print a verifier."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]


def db_state(cluster: Cluster, *, exact_verifiers: bool = True) -> dict[str, Any]:
    """All that a run can change.  With *exact_verifiers* the digest of each
    stored verifier, else only whether a role has one (verifiers carry a
    random salt, so two clean runs differ there)."""
    state: dict[str, Any] = dict(role_snapshot(cluster))
    with contextlib.closing(cluster.connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolname, rolpassword FROM pg_authid ORDER BY 1")
        state["passwords"] = [
            (name, _digest(pw) if exact_verifiers else pw is not None)
            for name, pw in cur.fetchall()
        ]
        cur.execute(
            "SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace"
            " WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1"
        )
        state["schemas"] = cur.fetchall()
        cur.execute("SELECT datacl::text FROM pg_database WHERE datname = current_database()")
        state["database_acl"] = cur.fetchall()
        cur.execute(
            "SELECT schemaname, tablename, tableowner FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
        state["tables"] = cur.fetchall()
        cur.execute(
            "SELECT to_regclass('alembic_version') IS NOT NULL,"
            " to_regclass('rolekit_changelog') IS NOT NULL,"
            " to_regclass('rolekit_changelog_history') IS NOT NULL"
        )
        has_version, has_changelog, has_history = cur.fetchone()  # type: ignore[misc]
        state["alembic_version"] = None
        if has_version:
            cur.execute("SELECT version_num FROM alembic_version ORDER BY 1")
            state["alembic_version"] = cur.fetchall()
        state["changelog"] = state["history"] = None
        cols = "id, checksum, context_expression, context_used, exec_type"
        if has_changelog:
            cur.execute(f"SELECT {cols} FROM rolekit_changelog ORDER BY id")
            state["changelog"] = cur.fetchall()
        if has_history:
            cur.execute(f"SELECT {cols} FROM rolekit_changelog_history ORDER BY seq")
            state["history"] = cur.fetchall()
    return state


def state_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Which keys of two :func:`db_state` results differ, and how (short)."""
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"{key}:\n  - {a.get(key)!r:.600}\n  + {b.get(key)!r:.600}")
    return "\n".join(lines) or "(equal)"


def history(cluster: Cluster) -> list[tuple[str, str]]:
    if not _query(cluster, "SELECT to_regclass('rolekit_changelog_history') IS NOT NULL")[0][0]:
        return []
    return _query(cluster, "SELECT id, exec_type FROM rolekit_changelog_history ORDER BY seq")  # type: ignore[return-value]


def _query(
    cluster: Cluster, text: str, params: Sequence[Any] | None = None
) -> list[tuple[Any, ...]]:
    """A superuser query on a connection closed at once (``with conn`` alone
    would leave it open until garbage collection, looking like a client)."""
    with contextlib.closing(cluster.connect()) as conn, conn.cursor() as cur:
        cur.execute(text, params)
        return cur.fetchall() if cur.description else []


def server_now(cluster: Cluster) -> datetime.datetime:
    """The server's clock, to tell the backends started after this moment."""
    return _query(cluster, "SELECT clock_timestamp()")[0][0]  # type: ignore[no-any-return]


def client_backends(
    cluster: Cluster, since: datetime.datetime | None = None
) -> list[tuple[int, str, str]]:
    """(pid, user, query) of every other client backend (started after *since*)."""
    return _query(  # type: ignore[return-value]
        cluster,
        "SELECT pid, coalesce(usename::text, ''), coalesce(query, '') FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND (%s::timestamptz IS NULL OR backend_start >= %s::timestamptz)",
        (since, since),
    )


def wait_idle(
    cluster: Cluster,
    *,
    since: datetime.datetime | None = None,
    keep: Iterable[int] = (),
    timeout: float = 60,
) -> None:
    """Wait until the backends started after *since* (but *keep*) are gone: a
    killed client's backend may still be finishing (or committing) its statement."""
    keep = set(keep)
    deadline = time.monotonic() + timeout
    while True:
        left = [b for b in client_backends(cluster, since) if b[0] not in keep]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"backends still running after {timeout}s: {left}\n{_diagnose(cluster, left)}"
            )
        time.sleep(0.05)


def _diagnose(cluster: Cluster, left: list[tuple[int, str, str]]) -> str:
    """Who holds the other end of a lingering backend's connection."""
    rows = _query(
        cluster,
        "SELECT pid, state, client_port, backend_start, state_change, application_name"
        " FROM pg_stat_activity WHERE pid = ANY(%s)",
        ([b[0] for b in left],),
    )
    lines = [repr(r) for r in rows]
    ss = subprocess.run(["ss", "-tnp"], capture_output=True, text=True, check=False).stdout
    lines += [line for line in ss.splitlines() if f":{cluster.port}" in line]
    log = cluster.log_text().splitlines()
    for pid, *_ in left:
        lines += [line for line in log if f"[{pid}]" in line][-8:]
    return "\n".join(lines)


def reset_to_base(project: Project) -> None:
    """Back to a pristine cluster: no family, no changelog, no alembic table."""
    project.downgrade("base", x={"terminate": "true"})
    project.query(
        "DROP TABLE IF EXISTS rolekit_changelog, rolekit_changelog_history, rolekit_meta,"
        " rolekit_rotation, rolekit_rotation_history, rolekit_password_history,"
        " alembic_version; DROP FUNCTION IF EXISTS rolekit_history_append_only(),"
        " rolekit_append_only()"
    )


def fingerprint_salt(project: Project) -> str | None:
    if not project.query("SELECT to_regclass('rolekit_meta') IS NOT NULL")[0][0]:
        return None
    rows = project.query("SELECT value FROM rolekit_meta WHERE key = 'fingerprint_salt'")
    return rows[0][0] if rows else None


def set_fingerprint_salt(project: Project, salt: str) -> None:
    """Re-use a salt after a rebuild, so checksums of password repeatables
    stay comparable with a reference run."""
    project.query("UPDATE rolekit_meta SET value = %s WHERE key = 'fingerprint_salt'", (salt,))


# -- processes --------------------------------------------------------------------


def alembic_cmd(
    *args: str, context: str | None = None, x: Mapping[str, str] | None = None
) -> list[str]:
    xs: list[str] = []
    if context is not None:
        xs += ["-x", f"context={context}"]
    for k, v in (x or {}).items():
        xs += ["-x", f"{k}={v}"]
    return [sys.executable, "-m", "alembic", *xs, *args]


def rolekit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rolekit.cli", *args]


class Spawned:
    """A command of *project* running in the background; output goes to files
    (readable while it runs) and, once finished, to ``project.outputs``."""

    def __init__(self, project: Project, cmd: Sequence[str], **env: str) -> None:
        self.project = project
        self.dir = Path(tempfile.mkdtemp(prefix="rolekit-spawn-"))
        self._out = open(self.dir / "stdout", "w+b")  # noqa: SIM115 (closed in finish)
        self._err = open(self.dir / "stderr", "w+b")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            list(cmd), cwd=project.root, env=project.env(**env), stdout=self._out, stderr=self._err
        )
        self.result: subprocess.CompletedProcess[str] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_so_far(self) -> str:
        return (self.dir / "stderr").read_bytes().decode("utf-8", "replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self.result is not None:
            return self.result
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait(10)
            raise
        finally:
            self._out.close()
            self._err.close()
        out = (self.dir / "stdout").read_bytes().decode("utf-8", "replace")
        err = (self.dir / "stderr").read_bytes().decode("utf-8", "replace")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.project.outputs.append(out + err)
        self.result = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)
        return self.result


_STATEMENT = re.compile(r"\[(\d+)\] (\S*)@\S* LOG:  statement: (.*)")


class LogTail:
    """The server log from the moment of creation on."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.offset = cluster.log_size()
        self._fh = open(cluster.logfile, "rb")  # noqa: SIM115 (closed in close)
        self._fh.seek(self.offset)
        self._buffer = b""
        self.statement_count = 0

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> LogTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> bytes:
        """Read what was appended since the last poll; count statements."""
        chunk = self._fh.read()
        if chunk:
            self._buffer += chunk
            self.statement_count += chunk.count(b"LOG:  statement: ")
        return chunk

    def text(self) -> str:
        self.poll()
        return self._buffer.decode("utf-8", "replace")

    def statements(self) -> list[tuple[str, str, str]]:
        """(pid, user, first line of statement) in log order."""
        return [m.groups() for m in _STATEMENT.finditer(self.text())]  # type: ignore[misc]

    def wait_for(self, needle: str, *, timeout: float = 60, proc: Spawned | None = None) -> None:
        """Wait until *needle* shows up in the log (a statement started)."""
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if proc is not None and not proc.running():
                res = proc.finish()
                raise AssertionError(
                    f"process ended ({res.returncode}) before {needle!r} was logged:\n{res.stderr}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the server log after {timeout}s")
            time.sleep(0.01)


def wait_for_output(proc: Spawned, needle: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while needle not in proc.stderr_so_far():
        if not proc.running():
            res = proc.finish()
            raise AssertionError(
                f"process ended ({res.returncode}) before {needle!r}:\n{res.stderr}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not printed after {timeout}s")
        time.sleep(0.02)


@contextlib.contextmanager
def _environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli(
    project: Project, *args: str, record: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """``rolekit ARGS --config <project>/alembic.ini`` run in this process.

    An exception escaping ``main`` is written to stderr as a traceback, as the
    real command line would print it.  With *record*, the output joins
    ``project.outputs`` (leave it out for ``creds``, which prints a password
    by design).
    """
    from rolekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    changes: dict[str, str | None] = {"ROLEKIT_CONTEXT": None, "DATABASE_URL": project.url}
    changes.update(env)
    with _environ(changes), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = main([*args, "--config", str(project.root / "alembic.ini")])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # what `python -m rolekit.cli` would print
            traceback.print_exc(file=err)
            code = 1
    result = subprocess.CompletedProcess(["rolekit", *args], code, out.getvalue(), err.getvalue())
    if record:
        project.outputs.append(result.stdout + result.stderr)
    return result


# -- the second family ------------------------------------------------------------

REVISION_0003 = '''"""A second family, billing, with pauses so faults land inside the revision.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def pause(mark):
    op.execute(f"SELECT {pause_sql}, 'rev-0003-{{mark}}'")


def upgrade():
    pause("a")
    op.create_role_family("billing", ["billing_a", "billing_b"])
    pause("b"){slow}
    op.execute("CREATE SCHEMA billing_schema AUTHORIZATION billing")
    pause("c")
    op.execute("CREATE TABLE billing_schema.invoices (id int)")
    pause("d")


def downgrade():
    op.execute("DROP SCHEMA IF EXISTS billing_schema CASCADE")
    op.drop_role_family("billing", ["billing_a", "billing_b"])
'''

BILLING_REPEATABLES = '''"""billing's repeatables, with pauses between them."""

from rolekit.repeatable import FamilyLogin, SetPasswords, Sql

CTX = "dev or local"


class LateSql(Sql):
    phase = 1  # runs among the login repeatables


def pause(n, late=False):
    return (LateSql if late else Sql)(f"pause_{{n:02d}}", f"SELECT {pause_sql}, 'pause-{{n:02d}}'", context=CTX)


REPEATABLES = [
    pause(1),
    SetPasswords("set_passwords_billing", ["billing_a", "billing_b"], context=CTX),
    pause(2),
    Sql("grant_billing", "GRANT USAGE, CREATE ON SCHEMA billing_schema TO billing",
        targets=["billing"], context=CTX),
    pause(3),
    Sql("billing_settings", "ALTER ROLE billing SET statement_timeout = '5min'",
        targets=["billing"], context=CTX),
    pause(4),
    Sql("grant_my_app_billing", "GRANT USAGE ON SCHEMA billing_schema TO my_app; "
        "GRANT SELECT ON billing_schema.invoices TO my_app", targets=["my_app"], context=CTX),
    pause(5),{slow}
    pause(6, late=True),
    FamilyLogin("allow_login_for_billing", "billing", ["billing_a", "billing_b"]),
    pause(7, late=True),
    pause(8, late=True),
]
'''

BILLING_IDS = {
    "set_passwords_billing",
    "grant_billing",
    "billing_settings",
    "grant_my_app_billing",
    "allow_login_for_billing",
    *(f"pause_{n:02d}" for n in range(1, 9)),
}
SLOW_REVISION = f"""
    op.execute("SELECT {tunable_sleep("revision_sleep")}, 'slow-revision'")"""
SLOW_REPEATABLE = f"""
    Sql("slow_step", "SELECT {tunable_sleep("sleep")}, 'slow-step'", context=CTX),"""


def install_billing(
    project: Project,
    *,
    pause_sql: str = "pg_sleep(0.05)",
    slow: bool = False,
    passwords: bool = True,
) -> None:
    """Add revision 0003 (family billing), its repeatables, its rotation state
    (billing_a logs in, in dev and local) and its passwords.

    With *slow*, the revision and the repeatables each get a step that pauses
    as long as :func:`slow_options` says: ``slow-revision`` right after the
    family is created, ``slow-step`` after every password and grant.
    """
    versions = project.root / "migrations" / "versions"
    (versions / "0003_billing_family.py").write_text(
        REVISION_0003.format(pause_sql=pause_sql, slow=SLOW_REVISION if slow else "")
    )
    project.write_repeatables(
        BILLING_REPEATABLES.format(pause_sql=pause_sql, slow=SLOW_REPEATABLE if slow else ""),
        name="zz_billing.py",
    )
    data = project.state()
    data["families"]["billing"] = {
        "dev": {"login": ["billing_a"]},
        "local": {"login": ["billing_a"]},
    }
    project.write_state(data)
    if passwords:
        for ctx in ("dev", "local"):
            for role in ("billing_a", "billing_b"):
                project.set_password(role, ctx)


def login_works(cluster: Cluster, user: str, password: str) -> bool:
    try:
        conn = cluster.connect(user, password, connect_timeout=10)
    except psycopg2.OperationalError:
        return False
    conn.close()
    return True


def assert_logins(project: Project, context: str = "dev") -> None:
    """Every LOGIN member logs in with its password from the secrets file."""
    rows = project.query(
        "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname <> %s"
        " AND rolname <> 'migrator' AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) ORDER BY 1",
        (project.cluster.superuser,),
    )
    assert rows, "no member can log in"
    for (role,) in rows:
        password = project.secrets.get(role, context).reveal()
        assert login_works(project.cluster, role, password), f"{role} cannot log in"


# -- leaks ------------------------------------------------------------------------


def verifier_needles(verifier: str) -> list[str]:
    """The parts of a SCRAM verifier worth searching for: the whole string and
    its StoredKey and ServerKey (the salt alone is no secret)."""
    needles = [verifier]
    if verifier.startswith("SCRAM-SHA-256$"):
        keys = verifier.split("$", 2)[2]
        needles += [keys, *keys.split(":")]
    return needles


def find_leaks(places: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """``"<secret name> in <place>"`` for every secret found in a place."""
    hits = []
    for place, text in places.items():
        for name, value in secrets.items():
            if value and value in text:
                hits.append(f"{name} in {place}")
    return hits


def project_files(project: Project) -> dict[str, str]:
    """Text of the project's files that are not secrets files."""
    found = {}
    for path in sorted(project.root.rglob("*")):
        if not path.is_file() or path.is_symlink() or "__pycache__" in path.parts:
            continue
        if path.name.endswith((".age",)) or "passwords" in path.name:
            continue
        found[f"file {path.relative_to(project.root)}"] = path.read_bytes().decode(
            "utf-8", "replace"
        )
    return found


def changelog_text(project: Project) -> str:
    parts = []
    for table in (
        "rolekit_changelog",
        "rolekit_changelog_history",
        "rolekit_meta",
        "rolekit_rotation",
        "rolekit_rotation_history",
        "rolekit_password_history",
    ):
        if project.query("SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]:
            parts.append(repr(project.query(f"SELECT * FROM {table}")))
    return "\n".join(parts)


def family_verifiers(project: Project, pattern: str = "my_app%") -> dict[str, str]:
    """The stored verifiers of the roles named like *pattern* (a LIKE pattern)."""
    rows = project.query(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname LIKE %s AND rolpassword IS NOT NULL",
        (pattern,),
    )
    return {f"verifier of {r[0]} ({_digest(r[1])})": r[1] for r in rows}


def machine_settings(examples: int, steps: int) -> Any:
    """hypothesis settings of a state machine whose steps run real processes:
    no deadline, no example database, no shrinking."""
    from hypothesis import HealthCheck, Phase, settings

    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
