"""``rolekit creds --format``: each format works with the consumer it is made for.

Each test hands the output to the real consumer (``sh`` and ``psql``,
libpq's password file, a URL, PgBouncer) and logs in through it, during a
rotation's overlap when both members may log in.  The Kubernetes manifest
is checked against the Secret schema's fields without a cluster.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import psycopg2
import pytest

from rolekit.client import Credentials, CredentialsProvider
from rolekit.errors import RolekitError
from rolekit.project.document import from_document
from rolekit.rotation import creds_formats
from rolekit.testing import PgBouncer, Project
from tests.clients.helpers import JERRY, TOM, set_state
from tests.guards.helpers import password

#: a password with every character a URL, a pgpass line and a shell treat specially
AWKWARD = "p@ss:w/rd%20 'q' \"d\" $HOME \\ #x?y&z=1"


def _overlap(project: Project, jerry_password: str | None = None) -> None:
    """The family in a rotation's overlap: both members may log in, jerry preferred."""
    project.upgrade("dev")
    project.set_password(JERRY, "dev", jerry_password)
    set_state(project, [TOM, JERRY], incoming=JERRY)
    project.upgrade("dev")


def _creds(project: Project, fmt: str, *args: str, check: bool = True) -> str:
    proc = project.rolekit(
        "creds", "my_app", "--context", "dev", "--format", fmt, *args, check=check
    )
    for role in (TOM, JERRY):
        assert password(project, role) not in proc.stderr
    return proc.stdout


def _session_user(project: Project, env: dict[str, str]) -> str:
    """``psql -c 'SELECT session_user'`` with libpq's environment *env* (no secret in argv)."""
    psql = str(project.cluster.bindir / "psql")
    where = ["-h", project.cluster.host, "-p", str(project.cluster.port), "-d", "postgres"]
    proc = subprocess.run(
        [psql, *where, "-X", "-tA", "-w", "-c", "SELECT session_user"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_env_is_read_by_sh_and_libpq_and_from_env(project: Project, tmp_path: Path) -> None:
    _overlap(project, AWKWARD)
    text = _creds(project, "env")
    env_file = tmp_path / "creds.env"
    env_file.write_text(text)
    # sh sources it (set -a exports), then psql logs in with PGUSER/PGPASSWORD
    script = f'set -a; . "{env_file}"; set +a; exec env'
    shell = subprocess.run(
        ["sh", "-c", script], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True
    )
    exported = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert exported["PGUSER"] == JERRY and exported["PGPASSWORD"] == AWKWARD
    libpq = {k: v for k, v in exported.items() if k in ("PGUSER", "PGPASSWORD")}
    assert _session_user(project, libpq) == JERRY
    # from_env("MY_APP") gets both members, and falls back to tom if jerry is refused
    provider = CredentialsProvider.from_env("MY_APP", environ=exported)
    creds = provider.current()
    assert creds.preferred[0] == JERRY and creds.alternate is not None
    assert creds.alternate[0] == TOM and creds.alternate[1].reveal() == password(project, TOM)


def test_pgpass_lets_libpq_log_in_as_both_members(project: Project, tmp_path: Path) -> None:
    _overlap(project, AWKWARD)
    passfile = tmp_path / "pgpass"
    _creds(project, "pgpass", "--output", str(passfile))
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600  # libpq ignores a wider one
    lines = passfile.read_text().splitlines()
    host, port = project.cluster.host, project.cluster.port
    assert [line.split(":", 4)[:4] for line in lines] == [
        [host, str(port), "postgres", JERRY],
        [host, str(port), "postgres", TOM],
    ]
    for role in (JERRY, TOM):
        assert _session_user(project, {"PGUSER": role, "PGPASSFILE": str(passfile)}) == role


def test_url_percent_encodes_the_password(project: Project) -> None:
    _overlap(project, AWKWARD)
    url = _creds(project, "url").strip()
    assert AWKWARD not in url
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT session_user")
            assert cur.fetchone() == (JERRY,)
    finally:
        conn.close()
    # --host/--port/--dbname override the project's URL
    other = _creds(project, "url", "--host", "db.internal", "--port", "6432", "--dbname", "app")
    assert other.strip().endswith("@db.internal:6432/app")


#: Kubernetes object names (DNS-1123 subdomain) and label syntax
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _check_secret_schema(manifest: dict[str, object]) -> None:
    """The fields of a core/v1 Secret that ``kubectl apply`` validates."""
    assert set(manifest) <= {"apiVersion", "kind", "metadata", "type", "data", "stringData"}
    assert manifest["apiVersion"] == "v1" and manifest["kind"] == "Secret"
    assert manifest["type"] == "Opaque"
    metadata = manifest["metadata"]
    assert isinstance(metadata, dict) and set(metadata) == {"name", "labels"}
    name = metadata["name"]
    assert len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name), name
    for key, value in metadata["labels"].items():
        prefix, _, label = key.rpartition("/")
        assert not prefix or (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(prefix)), key
        assert len(label) <= 63 and _LABEL_NAME.fullmatch(label), key
        assert isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.fullmatch(value)
    data = manifest["stringData"]
    assert isinstance(data, dict) and data
    for key, value in data.items():
        assert len(key) <= 253 and _SECRET_KEY.fullmatch(key) and isinstance(value, str), key


def test_k8s_secret_fits_the_secret_schema_with_a_stable_name(project: Project) -> None:
    project.upgrade("dev")
    before = json.loads(_creds(project, "k8s-secret"))
    _check_secret_schema(before)
    _overlap(project)
    during = json.loads(_creds(project, "k8s-secret"))
    _check_secret_schema(during)
    # one name and the same labels in every phase: kubectl apply updates one object
    assert during["metadata"] == before["metadata"]
    assert before["metadata"]["name"] == "my-app-dev-db-credentials"
    assert before["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rolekit"
    # the mounted key is the document from_file reads, with both members
    document = during["stringData"]["credentials.json"]
    creds = from_document(document, "the Secret")
    assert creds.preferred[0] == JERRY and creds.alternate is not None
    assert creds.alternate[0] == TOM
    assert during["stringData"]["PGUSER"] == JERRY


def test_pgbouncer_userlist_lets_a_real_pgbouncer_accept_both_members(project: Project) -> None:
    _overlap(project)
    userlist = _creds(project, "pgbouncer")
    assert password(project, TOM) not in userlist and password(project, JERRY) not in userlist
    assert [line.split(" ")[0] for line in userlist.splitlines()] == [f'"{JERRY}"', f'"{TOM}"']
    assert all(' "SCRAM-SHA-256$4096:' in line for line in userlist.splitlines())
    with PgBouncer(project.cluster) as pooler:
        pooler.set_auth_file(userlist)
        for role in (TOM, JERRY):
            # the client logs in to PgBouncer, PgBouncer to the server (SCRAM pass-through)
            conn = psycopg2.connect(
                host=pooler.host,
                port=pooler.port,
                dbname="postgres",
                user=role,
                password=password(project, role),
            )
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT session_user")
                    assert cur.fetchone() == (role,)
            finally:
                conn.close()
        # (PgBouncer words a wrong password its own way)
        with pytest.raises(psycopg2.OperationalError, match="SASL authentication failed"):
            psycopg2.connect(
                host=pooler.host, port=pooler.port, dbname="postgres", user=TOM, password="wrong"
            ).close()


def test_pgbouncer_refuses_what_it_cannot_read_or_the_server_lacks(
    project: Project, managed_project: Project
) -> None:
    # the least-privileged migrator cannot read pg_authid: nothing is printed
    managed_project.upgrade("dev")
    proc = managed_project.rolekit(
        "creds", "my_app", "--context", "dev", "--format", "pgbouncer", check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert "reading them needs a superuser (pg_authid)" in proc.stderr
    assert proc.stdout == ""
    # files ahead of the server: jerry's new password is not applied yet
    project.upgrade("dev")
    project.set_password(JERRY, "dev")
    set_state(project, [TOM, JERRY], incoming=JERRY)
    proc = project.rolekit(
        "creds", "my_app", "--context", "dev", "--format", "pgbouncer", check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert "the server does not have it yet (run alembic upgrade)" in proc.stderr
    assert proc.stdout == "" and password(project, JERRY) not in proc.stderr


def test_output_is_atomic_and_0600_and_names_no_secret(project: Project, tmp_path: Path) -> None:
    project.upgrade("dev")
    target = tmp_path / "creds.json"
    target.write_text("old")
    target.chmod(0o644)
    old_inode = target.stat().st_ino
    stdout = _creds(project, "json", "--output", str(target))
    assert stdout == ""
    # a new file renamed over the old one (readers see the old or the new, never half)
    assert target.stat().st_ino != old_inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [target]
    assert from_document(target.read_text(), "output").preferred[0] == TOM
    # --json reports where it wrote, without the secret
    proc = project.rolekit(
        "creds", "my_app", "--context", "dev", "--format", "env", "--json",
        "--output", str(tmp_path / "creds.env"),
    )  # fmt: skip
    assert json.loads(proc.stdout) == {"output": str(tmp_path / "creds.env"), "format": "env"}
    assert password(project, TOM) not in proc.stdout + proc.stderr


def test_bad_format_and_missing_host_are_named(project: Project) -> None:
    project.upgrade("dev")
    proc = project.rolekit("creds", "my_app", "--context", "dev", "--format", "yaml", check=False)
    assert proc.returncode == 2 and "invalid choice: 'yaml'" in proc.stderr
    proc = project.rolekit("creds", "my_app", "--context", "dev", "--port", "x", check=False)
    assert proc.returncode == 2 and "--port: invalid int value: 'x'" in proc.stderr
    # no host known (no DATABASE_URL, no sqlalchemy.url, no --host): named, nothing printed
    creds = Credentials.of(TOM, password(project, TOM))
    with pytest.raises(RolekitError, match="--format url needs the database host") as refused:
        creds_formats.render("url", creds, "my_app", "dev", creds_formats.Target())
    assert password(project, TOM) not in str(refused.value)


def test_url_puts_a_unix_socket_directory_in_the_query() -> None:
    from psycopg.conninfo import conninfo_to_dict

    creds = Credentials.of(TOM, AWKWARD)
    url = creds_formats.render(
        "url", creds, "my_app", "dev", creds_formats.Target("/var/run/postgresql", 5433, "app")
    ).strip()
    parsed = conninfo_to_dict(url)
    assert parsed["host"] == "/var/run/postgresql" and parsed["port"] == "5433"
    assert parsed["dbname"] == "app" and parsed["user"] == TOM
    assert parsed["password"] == AWKWARD


def test_output_without_a_format_writes_the_json_document(project: Project, tmp_path: Path) -> None:
    """A file never gets the terminal form, and the terminal never gets the password."""
    project.upgrade("dev")
    target = tmp_path / "creds.json"
    proc = project.rolekit("creds", "my_app", "--context", "dev", "--output", str(target))
    assert proc.stdout == "" and password(project, TOM) not in proc.stderr
    assert from_document(target.read_text(), "output").preferred[0] == TOM


@pytest.mark.parametrize("fmt", [[], ["--format", "json"], ["--format", "env"]])
def test_an_empty_output_is_refused_and_prints_no_password(
    project: Project, fmt: list[str]
) -> None:
    """``--output "$UNSET"``: refused by name, not taken as "no --output" (issue 23, 7)."""
    project.upgrade("dev")
    proc = project.rolekit("creds", "my_app", "--context", "dev", *fmt, "--output", "", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--output is empty" in proc.stderr
    assert proc.stdout == ""
    assert password(project, TOM) not in proc.stderr
    assert list(project.root.glob(".*.tmp*")) == []


def test_output_refuses_to_replace_a_symlink_fifo_or_directory(
    project: Project, tmp_path: Path
) -> None:
    """Only a regular file (or nothing) is replaced; a link stays a link, and what it
    points at is untouched (issue 23, 8: ``--output /dev/stdout`` replaced the link)."""
    project.upgrade("dev")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    links = {
        "link-to-file": outside,
        "link-to-device": Path("/dev/null"),
        "dangling-link": tmp_path / "missing",
    }
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    kinds = {
        **{name: "a symlink" for name in links},
        "fifo": "a FIFO",
        "folder": "a directory",
    }
    for name, kind in kinds.items():
        where = tmp_path / name
        proc = project.rolekit(
            "creds", "my_app", "--context", "dev", "--format", "env",
            "--output", str(where), check=False,
        )  # fmt: skip
        assert proc.returncode == 2, (name, proc.stderr)
        assert f"{where} is {kind}, not a regular file" in proc.stderr, proc.stderr
        assert "leave out --output" in proc.stderr
        assert proc.stdout == "" and password(project, TOM) not in proc.stderr
    for name, target in links.items():
        assert (tmp_path / name).is_symlink() and os.readlink(tmp_path / name) == str(target)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and (tmp_path / "folder").is_dir()
    assert outside.read_text() == "keep me\n"
    assert not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kinds, "outside.txt"])


def test_a_password_with_a_line_break_is_refused_not_split_over_pgpass_lines(
    project: Project, tmp_path: Path
) -> None:
    """python-dotenv decodes ``"\\n"`` in double quotes: such a password would be two
    pgpass lines, and every login through PGPASSFILE would fail (issue 23, finding 6).
    The secrets file is refused when read, naming the key, never the password."""
    project.upgrade("dev")
    secrets = project.root / "passwords.env"
    tom = password(project, TOM)
    lines = secrets.read_text().splitlines(keepends=True)
    key = f"{TOM}.password.dev="
    edited = [f'{key}"{tom}\\nsecond-line"\n' if ln.startswith(key) else ln for ln in lines]
    assert edited != lines
    secrets.write_text("".join(edited))
    passfile = tmp_path / "pgpass"
    for fmt in ("pgpass", "env", "json"):
        proc = project.rolekit(
            "creds", "my_app", "--context", "dev", "--format", fmt, "--output", str(passfile),
            check=False,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"key '{TOM}.password.dev'" in proc.stderr and "line break" in proc.stderr
        assert tom not in proc.stderr and "second-line" not in proc.stderr
        assert proc.stdout == "" and not passfile.exists()
