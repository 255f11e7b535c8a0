"""Throwaway local PostgreSQL clusters: for rolekit's tests, benchmarks and demo, and yours.

rolekit changes role passwords and terminates sessions, so every run needs a
server it owns outright rather than a shared one.  The sandbox authenticates
every connection with SCRAM and has no ``trust`` line anywhere: a broken
rotation must fail to log in, not slip through.  It logs every statement so a
test can prove that no clear-text password ever reached the server.

Binaries come from :mod:`rolekit.testing.binaries`.  PostgreSQL refuses to
run as root, so under root every server program runs as the unprivileged
``postgres`` system user.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection, encrypt_password

from rolekit.testing.binaries import find_bindir, probe, run_captured

_DEFAULT_SETTINGS = {
    "log_connections": "on",
    "log_disconnections": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "password_encryption": "scram-sha-256",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
}

_INITDB = ["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]
_INITDB_AUTH = ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"]

_HBA = """\
# rolekit sandbox: password authentication only, never trust
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host replication postgres 127.0.0.1/32 scram-sha-256
"""


def _run_as() -> tuple[int, int] | None:
    """The uid and gid to run the server as, or None to stay ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("PostgreSQL refuses root; need a 'postgres' user") from None
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


#: clusters not cleaned up yet; an atexit hook (registered with the first
#: cluster, not at import) stops them if a run crashes
_LIVE: set[Cluster] = set()


def _cleanup_all() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort, the interpreter is exiting
            cluster.cleanup()
    for template, _password in _TEMPLATES.values():
        shutil.rmtree(template.parent, ignore_errors=True)


@functools.cache
def _register_cleanup() -> None:
    atexit.register(_cleanup_all)


#: bindir -> (an initdb'd data directory new clusters copy, its superuser
#: password): initdb runs once per process and version, a copy takes a tenth
_TEMPLATES: dict[Path, tuple[Path, str]] = {}


class Cluster:
    """A private PostgreSQL server in a temporary directory, on a free port.

    Nothing is started until :meth:`start` (or ``with``); :meth:`cleanup`
    stops the server and deletes every file.
    """

    superuser = "postgres"
    host = "127.0.0.1"

    def __init__(
        self,
        major: int | None = None,
        *,
        bindir: Path | None = None,
        log_statement: str = "all",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else find_bindir(major)
        self.major, self._env = probe(self.bindir)
        if major is not None and major != self.major:
            raise ValueError(f"{self.bindir} is PostgreSQL {self.major}, not {major}")
        self.superuser_password = secrets.token_urlsafe(24)
        self.port = _free_port()
        self._settings = {**_DEFAULT_SETTINGS, "log_statement": log_statement}
        self._settings.update(settings or {})
        self._owner = _run_as()
        self._running = False
        self._tmp = Path(tempfile.mkdtemp(prefix="rolekit-pg-"))
        self.datadir = self._tmp / "data"
        self.logfile = self._tmp / "server.log"
        if self._owner:
            os.chown(self._tmp, *self._owner)
        _LIVE.add(self)
        _register_cleanup()

    def __repr__(self) -> str:
        return f"<Cluster PostgreSQL {self.major} on {self.host}:{self.port}>"

    def _run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a server program, as ``postgres`` without root's groups if root."""
        extra: dict[str, Any] = {}
        if self._owner:
            uid, gid = self._owner
            extra = {"user": uid, "group": gid, "extra_groups": []}
        cmd = [str(self.bindir / args[0]), *args[1:]]
        proc = run_captured(cmd, cwd=self._tmp, env={**self._env, **(env or {})}, **extra)
        if check and proc.returncode:
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"--- server log ---\n{self.log_text()[-3000:]}"
            )
        return proc

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", *args, "-D", str(self.datadir), check=False)

    def _write(self, path: Path, text: str, mode: int = 0o644) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        if self._owner:
            os.chown(path, *self._owner)

    def _initdb(self) -> None:
        """A fresh data directory: a copy of this process's template for the version."""
        if self.bindir not in _TEMPLATES:
            template = Cluster.__new__(Cluster)
            template.bindir, template._env, template._owner = self.bindir, self._env, self._owner
            template._tmp = Path(tempfile.mkdtemp(prefix="rolekit-pg-template-"))
            template.datadir, template.logfile = template._tmp / "data", template._tmp / "log"
            template.superuser_password = secrets.token_urlsafe(24)
            if self._owner:
                os.chown(template._tmp, *self._owner)
            template._initdb_here()
            _TEMPLATES[self.bindir] = (template.datadir, template.superuser_password)
        source, self.superuser_password = _TEMPLATES[self.bindir]
        # cp -a keeps the postgres owner and the 0700 mode the server insists on.
        subprocess.run(["cp", "-a", str(source), str(self.datadir)], check=True)

    def _initdb_here(self) -> None:
        pwfile = self._tmp / "pwfile"
        self._write(pwfile, self.superuser_password + "\n", 0o600)
        try:
            args = [f"--pgdata={self.datadir}", f"--pwfile={pwfile}", *_INITDB_AUTH]
            self._run("initdb", *args, *_INITDB)
        finally:
            pwfile.unlink(missing_ok=True)
        self._write(self.datadir / "pg_hba.conf", _HBA, 0o600)
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'rolekit.conf'\n")

    def start(self) -> Self:
        """Create the cluster on first use and start it; retry if the port got taken."""
        if self._running:
            return self
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        for _attempt in range(5):
            settings = {**self._settings, "listen_addresses": self.host}
            settings.update(port=str(self.port), unix_socket_directories=str(self._tmp))
            conf = "".join(f"{k} = {_conf_quote(v)}\n" for k, v in settings.items())
            self._write(self.datadir / "rolekit.conf", conf)
            offset = self.log_size()
            proc = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile))
            if proc.returncode == 0:
                self._running = True
                return self
            self.stop("immediate")  # in case it came up after pg_ctl gave up
            if "could not bind" not in self.log_since(offset):
                raise RuntimeError(
                    f"pg_ctl start failed:\n{proc.stdout}{proc.stderr}"
                    f"--- server log ---\n{self.log_since(offset)[-3000:]}"
                )
            self.port = _free_port()
        raise RuntimeError("no free port found for PostgreSQL after 5 attempts")

    def standby(self, *, timeout: float = 60) -> Cluster:
        """Start a hot standby streaming from this running cluster (a cascade if this is one).

        ``pg_basebackup -R`` copies the data directory; the standby's
        ``primary_conninfo`` carries the superuser's password (the copy's
        pg_hba.conf allows replication for it by password only).  Returns once
        this cluster's ``pg_stat_replication`` shows the standby streaming.
        A cascade (a base backup taken from a standby) needs
        ``full_page_writes = on`` on the primary.
        """
        replica = Cluster(bindir=self.bindir, settings=self._settings)
        replica.superuser_password = self.superuser_password
        name = f"standby_{replica.port}"
        replica._run(
            "pg_basebackup",
            f"--pgdata={replica.datadir}",
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--username={self.superuser}",
            env={"PGPASSWORD": self.superuser_password},  # never in the arguments
        )
        conninfo = self.dsn().replace(" dbname='postgres'", "") + f" application_name={name}"
        with open(replica.datadir / "postgresql.auto.conf", "a") as auto:
            auto.write(f"primary_conninfo = {_conf_quote(conninfo)}\n")
        replica.start()
        deadline = time.monotonic() + timeout
        while not self.query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s"
            " AND state = 'streaming'",
            (name,),
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica} is not streaming after {timeout:.0f}s")
            time.sleep(0.1)
        return replica

    def query_one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row of *query* (if it returns rows), as the superuser."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                row = cur.fetchone() if cur.description else None
                return row[0] if row else None
        finally:
            conn.close()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs; harmless otherwise."""
        if (self.datadir / "postmaster.pid").exists():
            proc = self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)
            if proc.returncode and self._pg_ctl("status").returncode != 3:
                raise RuntimeError(f"pg_ctl stop failed:\n{proc.stdout}{proc.stderr}")
        self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop with *mode* and start again on the same port when possible."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete the cluster's files; safe to call twice."""
        try:
            try:
                self.stop()
            except RuntimeError:
                self.stop("immediate")
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def _credentials(self, user: str | None, password: str | None) -> tuple[str, str | None]:
        """Default to the superuser; another user gets no password unless given one."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        return user, password

    def url(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """SQLAlchemy URL for psycopg2, with user and password percent-quoted."""
        user, password = self._credentials(user, password)
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        where = f"{self.host}:{self.port}/{quote(dbname, safe='')}"
        return f"postgresql+psycopg2://{auth}@{where}"

    def dsn(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """libpq keyword/value connection string, every value quoted."""
        user, password = self._credentials(user, password)
        params = {"host": self.host, "port": str(self.port), "user": user}
        params.update(dbname=dbname, **({} if password is None else {"password": password}))
        return " ".join(f"{k}={_libpq_quote(v)}" for k, v in params.items())

    def connect(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        *,
        autocommit: bool = True,
        **kw: Any,
    ) -> connection:
        """Open a psycopg2 connection; autocommit by default, as tests mostly want."""
        conn = psycopg2.connect(self.dsn(user, password, dbname), **kw)
        conn.autocommit = autocommit
        return conn

    def log_text(self) -> str:
        """The whole server log."""
        return self.log_since(0)

    def log_size(self) -> int:
        """Current end of the log, to pass to :meth:`log_since` later."""
        try:
            return self.logfile.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the server logged after *offset* (from :meth:`log_size`)."""
        try:
            with open(self.logfile, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def set_password(self, role: str, password: str, *, conn: connection | None = None) -> None:
        """``ALTER ROLE role PASSWORD`` with a SCRAM verifier computed here: the
        statement, and so the server log, never holds the password.  On *conn*
        (inside its transaction) when given, else on a connection of its own."""
        own = conn is None
        conn = conn or self.connect()
        try:
            verifier = encrypt_password(password, role, conn, "scram-sha-256")
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)), (verifier,)
                )
        finally:
            if own:
                conn.close()

    def create_migrator(
        self,
        name: str = "migrator",
        password: str | None = None,
        *,
        extra_roles: tuple[str, ...] = (),
        log_statement: str | None = "none",
    ) -> tuple[str, str]:
        """Create the least-privileged migration user rolekit documents.

        A managed service's admin user: LOGIN and CREATEROLE, the owner of the
        ``postgres`` database (so it may create the changelog tables in its
        public schema), and nothing else -- no ``pg_read_all_stats``, no
        ``pg_signal_backend``, no SET on any parameter -- unless *extra_roles*
        names some.  Like a managed service's default, its statements are not
        logged (*log_statement*, set for the role by the superuser): with
        ``log_statement = all`` and no SET privilege, rolekit refuses to send
        a verifier.  The password travels as a SCRAM verifier computed
        client-side, so the statement log never holds it.
        """
        password = password or secrets.token_urlsafe(24)
        role = sql.Identifier(name)
        conn = self.connect(autocommit=False)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(role))
            self.set_password(name, password, conn=conn)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("ALTER DATABASE postgres OWNER TO {}").format(role))
                if self.major < 15:  # 15 made the public schema its database owner's
                    cur.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))
                if log_statement is not None:
                    cur.execute(
                        sql.SQL("ALTER ROLE {} SET log_statement = {}").format(
                            role, sql.Literal(log_statement)
                        )
                    )
                for extra in extra_roles:
                    cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(extra), role))
            conn.commit()
        finally:
            conn.close()
        return name, password
