"""Streaming standbys: where else the old member can be logged in.

Roles live in the primary's catalog and replicate: ``NOLOGIN`` committed on
the primary locks the old member out of every hot standby as soon as it is
replayed there.  So a drain that only looks at the primary's
``pg_stat_activity`` can pass while applications read from a standby as the
old member.  rolekit therefore

* connects to every replica named in ``[rolekit] replicas`` (or
  ``ROLEKIT_REPLICAS``), with the primary URL's user and password unless a
  replica URL carries its own, and refuses when one cannot be reached or is
  not a standby of this primary;
* identifies each replica once: two entries reaching the same server (two
  names, two databases, one load-balanced address per standby) count as one;
* matches every physical WAL sender on the primary and on each replica
  (cascades) to the configured replica it serves, by the application_name
  the standby streams under (read on the standby, from its WAL receiver) and
  the port it streams from, and refuses a streaming standby that matches no
  configured one, or that it cannot tell from another: a standby it does not
  know is one it cannot watch;
* after the commit, waits (bounded) until each replica has replayed it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, NoReturn

from psycopg2 import sql
from sqlalchemy.engine import URL, make_url

from rolekit.errors import GuardError, ReplicaLagError, RolekitError, UnreachableError
from rolekit.pg.control import ControlConnection
from rolekit.project.config import REPLICAS_SOURCE, REPLICAS_UNCHECKED, Settings, parse_url

Progress = Callable[[str], None]

#: physical WAL senders, one per streaming standby (or running base backup).
#: A logical walsender is connected to a database; a physical one is not.
#: Without pg_read_all_stats the address is NULL but the row is still there.
_WAL_SENDERS = sql.SQL(
    "SELECT coalesce(host(r.client_addr), 'local'), r.client_addr IS NOT NULL,"
    " coalesce(r.application_name, '')"
    " FROM pg_stat_replication r JOIN pg_stat_activity a ON a.pid = r.pid"
    " WHERE a.datid IS NULL"
)
_IDENTITY = sql.SQL(
    "SELECT (SELECT system_identifier FROM pg_control_system())::text, pg_is_in_recovery(),"
    " pg_postmaster_start_time()::text, current_setting('port')::int"
)
#: what a standby streams as, and from which port (hidden without pg_read_all_stats)
_WAL_RECEIVER = sql.SQL(
    "SELECT status IS NULL, conninfo, sender_port FROM pg_stat_wal_receiver WHERE pid IS NOT NULL"
)
#: a libpq keyword in a WAL receiver's conninfo (``key=value`` pairs, unquoted)
_CONNINFO_KEY = re.compile(r" (?=\w+=)")


class Host(NamedTuple):
    """A server rolekit watches: the primary or a replica, on its own connection."""

    name: str
    connection: ControlConnection


class Server(NamedTuple):
    """What tells one server from another: a standby has its primary's system
    identifier, so its postmaster's start time and port are added."""

    system: str
    started: str
    port: int


class Receiver(NamedTuple):
    """A configured replica as its upstream sees it, from its WAL receiver."""

    host: Host
    #: the application_name it streams under (``None``: it is not streaming)
    name: str | None
    #: the port of the server it streams from
    upstream_port: int | None


class WalSender(NamedTuple):
    host: str
    #: the standby's address as the sender sees it (``None``: hidden from us)
    address: str | None
    application_name: str


def describe_url(url: URL) -> str:
    """``host:port/db``: how messages name a server (never with the password)."""
    return f"{url.host or 'local'}:{url.port or 5432}/{url.database or ''}"


def replica_url(primary: str, replica: str) -> URL:
    """The replica's URL, with the primary's user, password and database where it has none."""
    base = make_url(primary)
    url = parse_url(replica, REPLICAS_SOURCE)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise RolekitError(f"replica {describe_url(url)}: not a postgresql:// URL")
    if url.host is None:
        raise RolekitError(f"replica URL {url.render_as_string()} names no host")
    if url.username is None:
        url = url.set(username=base.username, password=base.password)
    if url.database is None:
        url = url.set(database=base.database)
    return url.set(drivername=base.drivername)


@contextlib.contextmanager
def open_replicas(settings: Settings, primary: ControlConnection) -> Iterator[list[Host]]:
    """Connect to every configured replica and check it is a standby of *primary*.

    :raises UnreachableError: a replica cannot be reached (rolekit cannot see
        who uses the old member there, so it refuses).
    :raises GuardError: a replica is not in recovery, or belongs to another
        cluster.
    """
    url = settings.require_url()
    identity = primary.fetchall(_IDENTITY)[0][0]
    with contextlib.ExitStack() as stack:
        hosts: dict[Server, Host] = {}
        for entry in settings.replicas:
            target = replica_url(url, entry)
            name = f"replica {describe_url(target)}"
            try:
                conn = stack.enter_context(
                    ControlConnection.open(
                        target.render_as_string(hide_password=False), application_name="rolekit"
                    )
                )
            except UnreachableError as exc:
                raise UnreachableError(
                    f"cannot reach {name}: {exc}; rolekit cannot see who uses the old member "
                    "there, so it refuses. Fix [rolekit] replicas (ROLEKIT_REPLICAS)"
                ) from None
            system, in_recovery, started, port = conn.fetchall(_IDENTITY)[0]
            if not in_recovery:
                raise GuardError(
                    f"{name} is not a standby (pg_is_in_recovery() is false); nothing was "
                    "changed. [rolekit] replicas must name this primary's streaming standbys"
                )
            if system != identity:
                raise GuardError(
                    f"{name} is a standby of another cluster (system identifier {system}, the "
                    f"primary's is {identity}); nothing was changed. Fix [rolekit] replicas"
                )
            server = Server(system, started, port)
            if server in hosts:  # another name for a server already listed: watch it once
                first = hosts[server]
                hosts[server] = first._replace(name=f"{first.name} (also listed as {name})")
            else:
                hosts[server] = Host(name, conn)
        yield list(hosts.values())


def wal_senders(hosts: Sequence[Host]) -> list[WalSender]:
    """The streaming standbys (physical WAL senders) of every host."""
    return [
        WalSender(host.name, address if visible else None, app)
        for host in hosts
        for address, visible, app in host.connection.fetchall(_WAL_SENDERS)
    ]


def check_standbys(settings: Settings, primary: Host, replicas: Sequence[Host]) -> list[WalSender]:
    """Refuse a streaming standby that is not a configured replica (see the module docs).

    Every standby has exactly one upstream, so the WAL senders of the primary
    and of the configured replicas are every standby of the tree that rolekit
    can reach: each must be a configured replica, each replica at most one of
    them.  A count is not enough: with the first standby listed twice, or only
    a cascaded standby listed, the numbers agree while a standby goes unwatched.
    Returns the senders, for the report.
    """
    senders = wal_senders([primary, *replicas])
    if settings.replicas_unchecked or not senders:
        return senders
    if len(senders) > len(replicas):
        _refuse_unknown(senders, f"but {len(replicas)} replica(s) are configured")
    if any(s.address is None for s in senders):
        _refuse_hidden(primary, "the WAL senders' details (pg_stat_replication)")
    receivers = [_receiver(primary, host) for host in replicas]
    ports = {h.name: h.connection.fetchall(_IDENTITY)[0][3] for h in [primary, *replicas]}
    unknown: list[WalSender] = []
    served: set[str] = set()
    for sender in senders:
        serving = [
            r.host.name
            for r in receivers
            if r.name == sender.application_name
            and r.upstream_port == ports[sender.host]
            and r.host.name != sender.host
        ]
        if len(serving) > 1 or _same_name(senders, sender) or served & set(serving):
            raise GuardError(
                f"rolekit cannot tell the streaming standbys named "
                f"{sender.application_name!r} apart (seen from {sender.host}); nothing was "
                "changed. Give each standby its own name (cluster_name, or application_name "
                "in its primary_conninfo), as synchronous replication needs"
            )
        served.update(serving)
        if not serving:
            unknown.append(sender)
    if unknown:
        _refuse_unknown(unknown, "which no configured replica is")
    return senders


def _same_name(senders: Sequence[WalSender], sender: WalSender) -> bool:
    """Whether another standby streams from the same host under *sender*'s name."""
    return any(
        s is not sender and (s.host, s.application_name) == (sender.host, sender.application_name)
        for s in senders
    )


def _receiver(primary: Host, host: Host) -> Receiver:
    """*host*'s WAL receiver: the name it streams under and the port it streams from."""
    rows = host.connection.fetchall(_WAL_RECEIVER)
    if not rows:
        return Receiver(host, None, None)
    hidden, conninfo, port = rows[0]
    if hidden or conninfo is None:
        _refuse_hidden(primary, f"the WAL receiver of {host.name} (pg_stat_wal_receiver)")
    options = dict(
        pair.partition("=")[::2] for pair in _CONNINFO_KEY.split(conninfo.strip()) if "=" in pair
    )
    name = options.get("application_name") or options.get("fallback_application_name") or ""
    return Receiver(host, name, port)


def _refuse_hidden(primary: Host, what: str) -> NoReturn:
    """Fail closed: without the details no standby can be matched to a replica."""
    user = primary.connection.scalar(sql.SQL("SELECT current_user"))
    raise GuardError(
        f"rolekit cannot tell which streaming standby each configured replica is: {user} may "
        f"not read {what}; nothing was changed. GRANT pg_read_all_stats TO {user}, or set "
        f"'replicas = {REPLICAS_UNCHECKED}' to accept the risk"
    )


def _refuse_unknown(unknown: Sequence[WalSender], why: str) -> NoReturn:
    """Refuse streaming standbys rolekit does not watch, naming each."""
    seen = ", ".join(
        f"{s.address or '<address hidden>'} ({s.application_name or 'no application_name'}) "
        f"via {s.host}"
        for s in unknown
    )
    hidden = (
        "; addresses read <address hidden> without pg_read_all_stats"
        if any(s.address is None for s in unknown)
        else ""
    )
    raise GuardError(
        f"{len(unknown)} streaming standby(s) replicate this database ({seen}), {why}; "
        "nothing was changed. rolekit cannot see who uses the old member on a standby it "
        f"does not know: name each standby in [rolekit] replicas (or ROLEKIT_REPLICAS){hidden}, "
        f"or set 'replicas = {REPLICAS_UNCHECKED}' to accept the risk"
    )


def wait_for_replay(
    primary: ControlConnection,
    replicas: Sequence[Host],
    *,
    timeout: float,
    progress: Progress,
) -> None:
    """Wait until every replica has replayed what the primary has written so far.

    Called right after the commit, so the commit's WAL is included.
    ``pg_current_wal_insert_lsn`` rather than the flush position: with
    ``synchronous_commit = off`` the commit record may not be flushed yet.

    :raises ReplicaLagError: a replica is behind after *timeout* seconds.
    """
    if not replicas:
        return
    target = primary.scalar(sql.SQL("SELECT pg_current_wal_insert_lsn()::text"))
    started = time.monotonic()
    waiting = list(replicas)
    while True:
        behind = []
        for host in waiting:
            done = host.connection.scalar(
                sql.SQL("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"), (target,)
            )
            if done:
                progress(
                    f"replicas: {host.name} replayed the commit ({target}) after "
                    f"{time.monotonic() - started:.1f}s"
                )
            else:
                behind.append(host)
        waiting = behind
        if not waiting:
            return
        if time.monotonic() - started >= timeout:
            names = ", ".join(h.name for h in waiting)
            raise ReplicaLagError(
                f"the change is committed on the primary, but {names} had not replayed it "
                f"({target}) after {timeout:.0f}s: its applications still see the old roles. "
                "Check replication (pg_stat_replication on the primary); raise "
                "[rolekit] replica_wait to wait longer"
            )
        time.sleep(0.05)
