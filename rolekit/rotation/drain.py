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
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

from rolekit import catalog, ddl
from rolekit.catalog import Privileges, Reader, SessionInfo
from rolekit.errors import DrainTimeoutError, LiveSessionsError, PrivilegeError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: seconds between two looks at pg_stat_activity while waiting
POLL_INTERVAL = 0.5
#: seconds to wait for terminated backends to exit
TERMINATE_WAIT = 10.0


def stderr_progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def describe(sessions: Sequence[SessionInfo]) -> str:
    """``3 session(s) (my_app_tom: web@10.0.0.5 x2, worker@local x1)``.

    An address PostgreSQL does not show us reads ``<hidden>``: the session
    counts all the same.
    """

    def where(s: SessionInfo) -> str:
        if not s.details_visible:
            return "<hidden>"
        return s.client_addr or "local"

    counts = Counter((s.user, s.application_name or "?", where(s)) for s in sessions)
    parts = [f"{user}: {app}@{addr} x{n}" for (user, app, addr), n in sorted(counts.items())]
    return f"{len(sessions)} session(s) ({', '.join(parts)})"


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


def wait_until_drained(
    reader: Reader,
    members: Sequence[str],
    *,
    timeout: float,
    progress: Progress = stderr_progress,
    poll_interval: float = POLL_INTERVAL,
) -> list[SessionInfo]:
    """Wait until *members* have no sessions; return those left after *timeout*.

    Call it on the control connection, before the migration transaction:
    it holds no lock while it waits.
    """
    started = time.monotonic()
    reported = -1.0
    while True:
        live = catalog.sessions(reader, members)
        waited = time.monotonic() - started
        if not live:
            if reported >= 0:
                progress(f"drain: {', '.join(members)} drained after {waited:.1f}s")
            return []
        if waited >= timeout:
            return live
        if waited - reported >= 1.0 or reported < 0:
            progress(f"drain: waiting for {describe(live)}; {waited:.0f}s of {timeout:.0f}s")
            reported = waited
        time.sleep(min(poll_interval, max(0.0, timeout - waited)))


def timeout_error(live: Sequence[SessionInfo], timeout: float) -> DrainTimeoutError:
    users = ", ".join(sorted({s.user for s in live}))
    return DrainTimeoutError(
        f"drain timeout ({timeout:.0f}s): {describe(live)} still use {users}; nothing was "
        "changed. Move the remaining applications to the new credentials (rolekit creds), "
        "raise the drain timeout, or end them with --terminate (-x terminate=true)"
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
    reader: Reader,
    members: Sequence[str],
    *,
    progress: Progress = stderr_progress,
    timeout: float = TERMINATE_WAIT,
) -> None:
    """End *members*' sessions, then look again until none is left.

    Call it after ``NOLOGIN`` committed, so an application cannot log in
    again between the termination and the commit.

    :raises LiveSessionsError: sessions remain after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    ended: set[int] = set()
    while live := catalog.sessions(reader, members):
        fresh = [s for s in live if s.pid not in ended]
        if fresh:
            progress(f"drain: terminating {describe(fresh)}")
            reader.fetchall(ddl.terminate_backends(), ([s.pid for s in fresh],))
            ended.update(s.pid for s in fresh)
        if time.monotonic() >= deadline:
            raise LiveSessionsError(
                f"NOLOGIN is committed, but {describe(live)} were still running "
                f"{timeout:.0f}s after being terminated; end them by hand "
                f"(SELECT pg_terminate_backend(pid) for pids {', '.join(str(s.pid) for s in live)})"
            )
        time.sleep(0.1)
    if ended:
        progress(f"drain: ended {len(ended)} session(s) of {', '.join(members)}; none left")
