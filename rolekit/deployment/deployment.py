"""Every place a member can be in use: the primary, its standbys, its poolers.

A :class:`Deployment` is opened only when a run needs it (a drain, a commit
to replay) and closed with the run.  It is what the drain watches, what the
decisive check looks at once more inside the transaction, where
``terminate`` ends sessions, and what ``status`` reports per host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from psycopg2 import sql
from sqlalchemy.engine import make_url

from rolekit.deployment import drain
from rolekit.deployment.common import Progress
from rolekit.deployment.poolers import IdleServer, Pooler, open_poolers
from rolekit.deployment.replicas import (
    Host,
    WalSender,
    check_standbys,
    describe_url,
    open_replicas,
    wait_for_replay,
)
from rolekit.deployment.usage import (
    HostSessions,
    PoolerClients,
    Source,
    TrackedLogins,
    Use,
    describe_uses,
    login_uses,
    pooler_uses,
    session_uses,
)
from rolekit.errors import LiveSessionsError
from rolekit.pg import catalog, tracking
from rolekit.pg.catalog import Privileges, Reader
from rolekit.pg.control import ControlConnection
from rolekit.project.config import Settings

#: a backend of *user* with this pid, ended if it exists (the pid alone could
#: have been reused by another backend since PgBouncer reported it)
_END_POOLED = sql.SQL(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND usename = %s"
)


def primary_name(settings: Settings) -> str:
    return f"primary {describe_url(make_url(settings.require_url()))}"


@dataclass(frozen=True)
class Deployment:
    """The servers and poolers of one database, on open connections."""

    settings: Settings
    primary: Host
    replicas: tuple[Host, ...]
    poolers: tuple[Pooler, ...]
    #: the schema of the login tracking tables, when tracking is on
    tracking_schema: str | None
    progress: Progress

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        settings: Settings,
        control: ControlConnection,
        *,
        progress: Progress,
        poolers: bool = True,
    ) -> Iterator[Deployment]:
        """Connect to the configured replicas and, unless told not to, poolers
        (refusing when one is unreachable)."""
        with (
            open_replicas(settings, control) as replicas,
            open_poolers(settings.poolers if poolers else ()) as pooler_list,
        ):
            yield cls(
                settings,
                Host(primary_name(settings), control),
                tuple(replicas),
                tuple(pooler_list),
                tracking.installed_schema(control),
                progress,
            )

    def on(self, control: ControlConnection) -> Deployment:
        """The same deployment with the primary reached through *control*."""
        return replace(self, primary=Host(self.primary.name, control))

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.primary, *self.replicas)

    def check_standbys(self) -> list[WalSender]:
        return check_standbys(self.settings, self.primary, self.replicas)

    # -- the drain ---------------------------------------------------------------

    def sources(self, privileges: Privileges, quiet_period: float) -> list[Source]:
        """What the drain polls: sessions on every host, pooler clients, tracked logins."""
        sources: list[Source] = [HostSessions(h.name, h.connection) for h in self.hosts]

        def close_idle(idle: list[IdleServer]) -> None:
            self.close_idle(idle, privileges)

        sources += [PoolerClients(p, close_idle) for p in self.poolers]
        if self.tracking_schema is not None:
            sources.append(
                TrackedLogins(
                    self._tracked_name,
                    self.primary.connection,
                    self.tracking_schema,
                    quiet_period,
                )
            )
        return sources

    def close_idle(self, idle: Sequence[IdleServer], privileges: Privileges) -> None:
        """End the backends of idle pool connections (PgBouncer opens new ones when needed).

        Without the privilege to signal them, say so once: they then close at
        PgBouncer's ``server_idle_timeout``.
        """
        users = sorted({s.user for s in idle})
        barred = [u for u in users if not privileges.may_signal(u)]
        if barred:
            self.progress(
                f"drain: {len(idle)} idle pool connection(s) of {', '.join(users)} on "
                f"{idle[0].pooler}: {privileges.user} may not end their backends (GRANT "
                f"pg_signal_backend TO {privileges.user}); waiting for PgBouncer's "
                "server_idle_timeout"
            )
            return
        closed = []
        for server in idle:
            for host in self.hosts:
                if host.connection.fetchall(_END_POOLED, (server.remote_pid, server.user)):
                    closed.append(f"{server.remote_pid} on {host.name}")
                    break
        if closed:
            self.progress(
                f"drain: closed {len(closed)} idle pool connection(s) of {', '.join(users)} "
                f"on {idle[0].pooler} (backends {', '.join(closed)}) instead of waiting out "
                "server_idle_timeout"
            )

    def look_once(self, members: Sequence[str], primary: Reader, within: float) -> list[Use]:
        """Every use of *members* now, the primary read through *primary* (the migration
        transaction's session, for the decisive check)."""
        uses = session_uses(self.primary.name, catalog.sessions(primary, members))
        for host in self.replicas:
            uses += session_uses(host.name, catalog.sessions(host.connection, members))
        for pooler in self.poolers:
            uses += pooler_uses(pooler, members)
        if self.tracking_schema is not None:
            logins = tracking.recent_logins(primary, self.tracking_schema, members, within)
            uses += login_uses(self._tracked_name, logins)
        return uses

    @property
    def _tracked_name(self) -> str:
        return f"{self.primary.name} (tracked logins)"

    def decisive_check(self, primary: Reader, members: Sequence[str], within: float) -> None:
        """The drain's last look, inside the transaction after ``NOLOGIN`` (see
        :func:`rolekit.deployment.drain.decisive_check`), on every place."""
        live = self.look_once(members, primary, within)
        if live:
            raise LiveSessionsError(
                f"{describe_uses(live)} appeared after the drain; nothing was changed. Move "
                "those applications to the new credentials and re-run, or pass --terminate "
                "(-x terminate=true)"
            )

    # -- after the commit --------------------------------------------------------

    def wait_for_replay(self) -> None:
        wait_for_replay(
            self.primary.connection,
            self.replicas,
            timeout=self.settings.replica_wait,
            progress=self.progress,
        )

    def terminate(self, members: Sequence[str]) -> None:
        drain.terminate_and_confirm(self.hosts, members, progress=self.progress)

    def report_late_sessions(self, members: Sequence[str]) -> None:
        """After ``NOLOGIN`` replayed: say so if a session logged in just before."""
        late = [
            use
            for host in self.hosts
            for use in session_uses(host.name, catalog.sessions(host.connection, members))
        ]
        if late:
            self.progress(
                f"drain: warning: {describe_uses(late)} logged in during the commit; they keep "
                "running but cannot log in again once they disconnect"
            )
