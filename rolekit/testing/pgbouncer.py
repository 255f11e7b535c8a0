"""A private PgBouncer in front of a sandbox cluster, for tests and benchmarks.

Two ways to authenticate clients (``auth_type = scram-sha-256`` both):

* ``auth="file"`` -- an ``auth_file`` holding the members' passwords, which
  the deploy step rewrites and reloads (SIGHUP) right after ``rotate begin``;
  PgBouncer logs in to the server with the password itself.
* ``auth="query"`` -- ``auth_query`` through a SECURITY DEFINER lookup of
  ``pg_shadow`` run as a dedicated auth user: a password rolekit sets is
  usable through the pooler at once, and PgBouncer logs in to the server
  with the SCRAM keys of the client's login (SCRAM pass-through).  Those keys
  are cached per user and go stale when the role's verifier changes, even to
  the same password with a new salt: server logins then fail for up to
  ``server_login_retry`` seconds.

``server_lifetime``/``server_idle_timeout`` default to PgBouncer's own
(3600 s and 600 s); rolekit's drain closes idle server connections of the
leaving member itself, through the admin console (*admin*: a user put in
``admin_users``, see :meth:`PgBouncer.admin_url`).

The ``pgbouncer`` binary comes from the Debian package (``make debs``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from psycopg2 import sql

from rolekit.testing.cluster import Cluster, _free_port, _run_as

AUTH_USER = "pgbouncer_auth"

_LOOKUP = """
CREATE SCHEMA IF NOT EXISTS pgbouncer_auth;
CREATE OR REPLACE FUNCTION pgbouncer_auth.user_lookup(in i_username text,
    out uname text, out phash text)
RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
$$ SELECT usename::text, passwd::text FROM pg_catalog.pg_shadow WHERE usename = i_username $$;
REVOKE ALL ON FUNCTION pgbouncer_auth.user_lookup(text) FROM PUBLIC;
"""


def find_binary() -> str:
    """The pgbouncer binary (installed with the Debian package, ``make debs``)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    if found is None:
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer (make debs)")
    return found


def version(binary: str) -> str:
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0].strip() if proc.stdout else "unknown"


def _userlist_line(user: str, password: str) -> str:
    """One auth_file line: both fields double-quoted, a quote doubled."""
    return " ".join('"' + value.replace('"', '""') + '"' for value in (user, password)) + "\n"


class PgBouncer:
    """``with PgBouncer(cluster) as bouncer:`` -- clients use ``bouncer.port``."""

    host = "127.0.0.1"

    def __init__(
        self,
        cluster: Cluster,
        *,
        pool_mode: str = "session",
        server_lifetime: int | None = None,
        server_idle_timeout: int | None = None,
        default_pool_size: int = 20,
        dbname: str = "postgres",
        auth: str = "file",
        users: dict[str, str] | None = None,
        admin: tuple[str, str] | None = None,
    ) -> None:
        if auth not in ("file", "query"):
            raise ValueError(f"auth must be 'file' or 'query', not {auth!r}")
        self.cluster = cluster
        self.binary = find_binary()
        self.version = version(self.binary)
        timeouts = {"server_lifetime": server_lifetime, "server_idle_timeout": server_idle_timeout}
        self.settings: dict[str, Any] = {
            "pool_mode": pool_mode,
            **{k: v for k, v in timeouts.items() if v is not None},
            "default_pool_size": default_pool_size,
            "auth_type": "scram-sha-256",
            "auth": "auth_file (plain passwords, reloaded on rotation)"
            if auth == "file"
            else "auth_query (SCRAM pass-through)",
            "query_wait_timeout": 20,
        }
        self.auth = auth
        self.users = dict(users or {})
        self.admin = admin
        if admin is not None:
            self.users[admin[0]] = admin[1]
            self.settings["admin_users"] = admin[0]
        self.reloads = 0
        self.dbname = dbname
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="rolekit-pgbouncer-"))
        self.logfile = self._tmp / "pgbouncer.log"
        self._owner: tuple[int, int] | None = None
        self._owner = _run_as()  # PgBouncer refuses root, as PostgreSQL does
        if self._owner:
            os.chown(self._tmp, *self._owner)

    def _write(self, path: Path, text: str) -> None:
        # A new file renamed over the old one, as deploy tools swap files.  An
        # in-place rewrite (same inode, same size: passwords of the same length)
        # was sometimes not picked up by PgBouncer 1.18's reload here (about one
        # run in four kept the old password); a renamed file always was.
        tmp = path.with_name(path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        if self._owner:
            os.chown(tmp, *self._owner)
        os.replace(tmp, path)

    def _prepare_server(self) -> str:
        password = secrets.token_urlsafe(24)
        conn = self.cluster.connect(dbname=self.dbname)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AUTH_USER,))
                role = sql.Identifier(AUTH_USER)
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                self.cluster.set_password(AUTH_USER, password, conn=conn)
                cur.execute(_LOOKUP)
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA pgbouncer_auth TO {}").format(role))
                cur.execute(
                    sql.SQL(
                        "GRANT EXECUTE ON FUNCTION pgbouncer_auth.user_lookup(text) TO {}"
                    ).format(role)
                )
        finally:
            conn.close()
        return password

    def _write_userlist(self) -> None:
        lines = [_userlist_line(user, password) for user, password in self.users.items()]
        self._write(self._tmp / "userlist.txt", "".join(lines))

    def set_users(self, users: dict[str, str], *, timeout: float = 10) -> None:
        """Rewrite the auth_file with these plain passwords and reload PgBouncer.

        Returns once PgBouncer logged the reload, as a deploy step that checks
        its work would: a client given the new password before that is refused.
        """
        self.users.update(users)
        self._write_userlist()
        self._reload(timeout)

    def set_auth_file(self, text: str, *, timeout: float = 10) -> None:
        """Replace the auth_file with *text* (``rolekit creds --format pgbouncer``,
        plus the admin user's line if any) and reload, like :meth:`set_users`."""
        admin = _userlist_line(*self.admin) if self.admin is not None else ""
        self._write(self._tmp / "userlist.txt", text + admin)
        self._reload(timeout)

    def _reload(self, timeout: float) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)
            self.reloads += 1
            deadline = time.monotonic() + timeout
            while self.log_text().count("got SIGHUP") < self.reloads:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PgBouncer did not reload within {timeout:.0f}s")
                time.sleep(0.01)

    def start(self) -> Self:
        auth: dict[str, Any] = {}
        if self.auth == "query":
            self.users[AUTH_USER] = self._prepare_server()
            auth = {
                "auth_user": AUTH_USER,
                "auth_query": "SELECT uname, phash FROM pgbouncer_auth.user_lookup($1)",
            }
        self._write_userlist()
        settings = {k: v for k, v in self.settings.items() if k != "auth"}
        for _attempt in range(5):
            self.port = _free_port()
            conf = {
                "listen_addr": self.host,
                "listen_port": self.port,
                "unix_socket_dir": "",
                "auth_file": self._tmp / "userlist.txt",
                **auth,
                "max_client_conn": 400,
                "ignore_startup_parameters": "extra_float_digits",
                "logfile": self.logfile,
                "pidfile": self._tmp / "pgbouncer.pid",
                "log_connections": 0,
                "log_disconnections": 0,
                **settings,
            }
            text = (
                "[databases]\n"
                f"{self.dbname} = host={self.cluster.host} port={self.cluster.port} dbname={self.dbname}\n"
                "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items())
            )
            self._write(self._tmp / "pgbouncer.ini", text)
            extra: dict[str, Any] = {}
            if self._owner:
                extra = {"user": self._owner[0], "group": self._owner[1], "extra_groups": []}
            self._proc = subprocess.Popen(
                [self.binary, str(self._tmp / "pgbouncer.ini")],
                cwd=self._tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **extra,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((self.host, self.port), 0.2),
                ):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"pgbouncer did not start:\n{self.log_text()[-2000:]}")

    def admin_url(self) -> str:
        """The admin console's URL, as ``[rolekit] poolers`` takes it (it holds the password)."""
        if self.admin is None:
            raise ValueError("this PgBouncer has no admin user (pass admin=(user, password))")
        user, password = (quote(part, safe="") for part in self.admin)
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/pgbouncer"

    def url(self, user: str, password: str) -> str:
        """A client URL through this PgBouncer."""
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{self.dbname}"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def log_summary(self, limit: int = 10) -> dict[str, int]:
        """WARNING/ERROR lines of the log, counted with addresses and ids stripped."""
        counts: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            match = re.search(r"\b(WARNING|ERROR|FATAL)\b (.*)", line)
            if match:
                text = re.sub(r"[CS]-0x[0-9a-f]+: ", "", match.group(2))
                text = re.sub(r"@127\.0\.0\.1:\d+", "", text)
                counts[f"{match.group(1)} {text}"] += 1
        return dict(counts.most_common(limit))

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
