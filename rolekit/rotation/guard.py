"""The drain guard: never disable a member that still has sessions.

AWS's alternating-users rotation, Vault and CloudNativePG switch the login
over without looking at ``pg_stat_activity``.  rolekit waits until the old
member has no sessions left, showing who is still connected, and otherwise
fails so the transaction rolls back and nothing changes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

from psycopg2 import sql

from rolekit import catalog
from rolekit.catalog import SessionInfo
from rolekit.errors import DrainTimeoutError
from rolekit.runtime.session import Session

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def describe(sessions: list[SessionInfo]) -> str:
    """``3 sessions (my_app_tom: web@10.0.0.5 x2, worker@local x1)``."""
    counts = Counter(
        (s.user, s.application_name or "?", s.client_addr or "local") for s in sessions
    )
    parts = [f"{user}: {app}@{addr} x{n}" for (user, app, addr), n in sorted(counts.items())]
    return f"{len(sessions)} session(s) ({', '.join(parts)})"


def drain(
    session: Session,
    members: list[str],
    *,
    timeout: float,
    terminate: bool = False,
    progress: Progress = stderr_progress,
    poll_interval: float = 0.5,
) -> None:
    """Wait until *members* have no sessions, within the current transaction.

    Call it after ``ALTER ROLE ... NOLOGIN`` and right before the commit: the
    change is not yet visible, so applications still on the old member keep
    connecting while they drain, and the final check is the moment it takes
    effect.  A session that comes back (an application that was not
    redeployed) is caught by that final check.

    :raises DrainTimeoutError: when sessions remain after *timeout* seconds
        and *terminate* is false.
    """
    if session.offline:
        return
    started = time.monotonic()
    last_report = -1.0
    while True:
        live = catalog.sessions(session, members)
        if not live:
            if last_report >= 0:
                progress(
                    f"drain: {', '.join(members)} drained after {time.monotonic() - started:.1f}s"
                )
            return
        waited = time.monotonic() - started
        if waited >= timeout:
            break
        if waited - last_report >= 1.0 or last_report < 0:
            progress(f"drain: waiting for {describe(live)}; {waited:.0f}s of {timeout:.0f}s")
            last_report = waited
        time.sleep(min(poll_interval, max(0.0, timeout - waited)))
    if not terminate:
        raise DrainTimeoutError(
            f"drain timeout ({timeout:.0f}s): {describe(live)} still use "
            f"{', '.join(sorted({s.user for s in live}))}; nothing was changed. Move the "
            "remaining applications to the new credentials (rolekit creds), raise "
            "-x drain_timeout, or pass -x terminate=true to end them"
        )
    progress(f"drain: terminating {describe(live)}")
    for info in live:
        session.fetchall(sql.SQL("SELECT pg_terminate_backend(%s, 5000)"), (info.pid,))
