"""The drain guard: never disable a member that still has sessions.

AWS's alternating-users rotation, Vault and CloudNativePG switch the login
over without looking at ``pg_stat_activity``.  rolekit waits until the old
member has no sessions left, showing who is still connected, and otherwise
fails so nothing changes.

Three rules keep the guard honest:

* **It waits outside the migration transaction**, on the control
  connection, so the locks a revision took (an ``ALTER TABLE`` on a table
  the applications query) never stall the applications while it waits --
  nor keep the old member's sessions from finishing.
* **The decisive check is one short step at the end**: inside the migration
  transaction, right after ``ALTER ROLE ... NOLOGIN``, it looks once more and
  refuses (rolling everything back) if a session appeared meanwhile.
* **It counts what it cannot see in detail.**  Without ``pg_read_all_stats``
  PostgreSQL hides the address and type of other users' backends, but never
  their pid and user, so the count is exact for every migration user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import NamedTuple

from rolekit.deployment.common import Progress as Progress
from rolekit.deployment.common import stderr_progress as stderr_progress
from rolekit.deployment.replicas import Host
from rolekit.deployment.usage import Source, Use, Watch, describe_uses, session_uses
from rolekit.errors import (
    DrainTimeoutError,
    LiveSessionsError,
    PrivilegeError,
    RolekitError,
    UnreachableError,
    first_line,
)
from rolekit.pg import catalog, ddl
from rolekit.pg.catalog import Privileges, Reader, SessionInfo

log = logging.getLogger(__name__)

#: seconds between two decisions (and progress checks) while waiting
DECIDE_INTERVAL = 0.05
#: seconds to wait for terminated backends to exit
TERMINATE_WAIT = 10.0


def describe(sessions: Sequence[SessionInfo], where: str = "the server") -> str:
    """``3 session(s) on the server (my_app_tom: web@10.0.0.5 x2, worker@local x1)``."""
    return describe_uses(session_uses(where, sessions))


def visibility_note(privileges: Privileges, members: Sequence[str]) -> str | None:
    """What the migration user cannot see about *members*' sessions, if anything."""
    hidden = [m for m in members if not privileges.sees_details_of(m)]
    if not hidden:
        return None
    return (
        f"addresses of {', '.join(hidden)}'s sessions are hidden from {privileges.user} "
        f"(it needs pg_read_all_stats or membership in {', '.join(hidden)}); they are counted "
        "all the same"
    )


def require_terminate(privileges: Privileges, members: Sequence[str], what: str) -> None:
    """Refuse *what* (``--terminate``...) before any change if rolekit could not end the sessions."""
    missing = [m for m in members if not privileges.may_signal(m)]
    if missing:
        names = ", ".join(missing)
        raise PrivilegeError(
            f"{what} needs to end sessions of {names}, but {privileges.user} may not signal their "
            f"backends; nothing was changed. GRANT pg_signal_backend TO {privileges.user}, or "
            f"GRANT {names} TO {privileges.user} (create_role_family does this for the families "
            "it creates)"
        )


class Outcome(NamedTuple):
    """How a drain ended."""

    drained: bool
    #: uses seen at the end (live sessions and clients, recent tracked logins)
    current: tuple[Use, ...]
    #: what was seen last, and how many seconds ago (the watch's age if nothing)
    last: tuple[Use, ...]
    quiet_for: float


def check_quiet_period(quiet_period: float, timeout: float) -> None:
    """A quiet period longer than the timeout could never pass: refuse before waiting."""
    if quiet_period > timeout:
        raise RolekitError(
            f"the drain timeout ({timeout:g}s) is shorter than the quiet period "
            f"({quiet_period:g}s), so the drain could never pass; nothing was changed. Raise "
            "--drain-timeout (-x drain_timeout) or lower --quiet-period (-x drain_quiet_period)"
        )


def wait_until_drained(
    sources: Sequence[Source],
    members: Sequence[str],
    *,
    timeout: float,
    quiet_period: float,
    progress: Progress = stderr_progress,
) -> Outcome:
    """Wait until no source has shown a use of *members* for *quiet_period* seconds.

    Call it before the migration transaction: it holds no lock while it
    waits.  Every source is polled in its own thread (see
    :class:`~rolekit.deployment.usage.Watch`); this thread decides and reports.

    :raises UnreachableError: a source stopped answering (rolekit cannot see
        there any more, so it does not pass).
    """
    check_quiet_period(quiet_period, timeout)
    with Watch(sources, members) as watch:
        return watch_until_drained(
            watch, timeout=timeout, quiet_period=quiet_period, progress=progress
        )


def watch_until_drained(
    watch: Watch, *, timeout: float, quiet_period: float, progress: Progress = stderr_progress
) -> Outcome:
    """:func:`wait_until_drained` on a watch already running (a :class:`Vigil`'s)."""
    names = ", ".join(watch.members)
    places = ", ".join(s.name for s in watch.sources)
    progress(
        f"drain: watching {places} for {names} (quiet period {quiet_period:g}s, "
        f"timeout {timeout:g}s)"
    )
    reported = -10.0
    last_key: object = None
    while True:
        seen = watch.sighting()
        if seen.failure is not None:
            raise _lost_sight(*seen.failure)
        now = time.monotonic()
        waited, quiet_for = now - watch.started, now - seen.last_seen
        if not seen.current and quiet_for >= quiet_period:
            progress(
                f"drain: {names} drained after {waited:.1f}s (no use seen for {quiet_for:.1f}s)"
            )
            return Outcome(True, (), seen.last, quiet_for)
        if waited >= timeout:
            return Outcome(False, seen.current, seen.last, quiet_for)
        key: object = seen.current or seen.last_seen
        if seen.current:
            line = f"waiting for {describe_uses(seen.current)}"
        elif seen.last:
            line = (
                f"last use {quiet_for:.0f}s ago ({describe_uses(seen.last)}); "
                f"{quiet_period - quiet_for:.0f}s of the quiet period left"
            )
        else:
            line = f"nothing seen; {quiet_period - quiet_for:.0f}s of the quiet period left"
        if waited - reported >= 5.0 or (key != last_key and waited - reported >= 1.0):
            progress(f"drain: {line}; {waited:.0f}s of {timeout:.0f}s")
            reported, last_key = waited, key
        time.sleep(DECIDE_INTERVAL)


class Vigil:
    """A drain watched before the run lock, and kept watching until the upgrade ends.

    ``rolekit rotate ... finish --apply`` drains its old member *before* its
    upgrade takes the database's run lock, so finishes of different families
    wait out their quiet periods side by side instead of one after another.
    The guard is not weakened: the same places are watched (sessions on
    every host, pooler clients, tracked logins), without a gap, from before
    the lock until the decisive check inside the migration transaction; the
    upgrade's drain takes the vigil's word only when it covers its members
    and has seen nothing of them for the whole quiet period *up to now*.
    Otherwise the upgrade drains as it always did.
    """

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def covers(self, members: Sequence[str], quiet_period: float) -> float | None:
        """Seconds nothing of *members* was seen, if that is the whole *quiet_period*."""
        seen = self.watch.sighting()
        if seen.failure is not None or seen.current or not set(members) <= set(self.watch.members):
            return None
        quiet_for = time.monotonic() - seen.last_seen
        return quiet_for if quiet_for >= quiet_period else None


def _lost_sight(where: str, exc: BaseException) -> BaseException:
    if not isinstance(exc, Exception):
        return exc  # KeyboardInterrupt and the like: not ours to rephrase
    return UnreachableError(
        f"drain: lost sight of {where}: {first_line(exc)}; rolekit cannot see who uses the old "
        "member there, so nothing was changed"
    )


def timeout_error(outcome: Outcome, timeout: float, quiet_period: float) -> DrainTimeoutError:
    if outcome.current:
        users = ", ".join(sorted({u.user for u in outcome.current}))
        return DrainTimeoutError(
            f"drain timeout ({timeout:.0f}s): {describe_uses(outcome.current)} still use "
            f"{users}; nothing was changed. Move the remaining applications to the new "
            "credentials (rolekit creds), raise the drain timeout, or end them with --terminate "
            "(-x terminate=true)"
        )
    users = ", ".join(sorted({u.user for u in outcome.last}))
    return DrainTimeoutError(
        f"drain timeout ({timeout:.0f}s): {users} was last used {outcome.quiet_for:.0f}s ago "
        f"({describe_uses(outcome.last)}), within the quiet period of {quiet_period:g}s; "
        "nothing was changed. A client that connects now and then still uses it: move it to "
        "the new credentials (rolekit creds), or raise the drain timeout"
    )


def decisive_check(reader: Reader, members: Sequence[str]) -> None:
    """The last look, inside the transaction, right after ``NOLOGIN``: refuse on any session.

    It never waits: a session here logged in after the drain finished, and
    waiting now would hold the migration's locks.
    """
    live = catalog.sessions(reader, members)
    if live:
        raise LiveSessionsError(
            f"{describe(live)} appeared after the drain; nothing was changed. Move those "
            "applications to the new credentials and re-run, or pass --terminate "
            "(-x terminate=true)"
        )


def terminate_and_confirm(
    hosts: Sequence[Host],
    members: Sequence[str],
    *,
    progress: Progress = stderr_progress,
    timeout: float = TERMINATE_WAIT,
) -> None:
    """End *members*' sessions on every host, then look again until none is left.

    Call it after ``NOLOGIN`` committed (and replayed on the standbys), so an
    application cannot log in again between the termination and the commit.

    :raises LiveSessionsError: sessions remain after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    ended: set[tuple[str, int]] = set()
    while live := [(h, s) for h in hosts for s in catalog.sessions(h.connection, members)]:
        for host in hosts:
            fresh = [s for h, s in live if h is host and (h.name, s.pid) not in ended]
            if fresh:
                progress(f"drain: terminating {describe_uses(session_uses(host.name, fresh))}")
                host.connection.fetchall(ddl.terminate_backends(), ([s.pid for s in fresh],))
                ended.update((host.name, s.pid) for s in fresh)
        if time.monotonic() >= deadline:
            left = [u for h, s in live for u in session_uses(h.name, [s])]
            raise LiveSessionsError(
                f"NOLOGIN is committed, but {describe_uses(left)} were still running "
                f"{timeout:.0f}s after being terminated; end them by hand "
                "(SELECT pg_terminate_backend(pid) for pids "
                f"{', '.join(str(u.pid) for u in left)})"
            )
        time.sleep(0.1)
    if ended:
        progress(f"drain: ended {len(ended)} session(s) of {', '.join(members)}; none left")
