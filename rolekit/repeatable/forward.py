"""The files of a run against the database's record: never backwards.

One rule, used by every upgrade (before any drain wait) and reported by
``rolekit check``, ``status`` and ``plan``: the state file must not be behind,
diverged from or foreign to the positions the database applied
(:mod:`rolekit.pg.positions`), and the secrets file must hold no
password rolekit replaced (:mod:`rolekit.pg.password_history`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rolekit.errors import StaleFileError
from rolekit.pg import password_history, positions
from rolekit.pg.catalog import Reader
from rolekit.repeatable.base import Repeatable
from rolekit.repeatable.kinds import SetPasswords
from rolekit.repeatable.loader import login_members
from rolekit.repeatable.run import RunContext


def check(
    reader: Reader, run: RunContext, active: Sequence[Repeatable]
) -> tuple[list[positions.Finding], list[str]]:
    """Each family's position against the database's, and every problem found."""
    if run.primary is None:
        return [], []
    families = login_members(active)
    findings = positions.compare(
        run.rotation, families, run.primary, positions.read(reader, families), run.take_over
    )
    found = positions.problems(findings, run.settings.state_file.name)
    setters = [r for rep in active if isinstance(rep, SetPasswords) for r in rep.roles]
    history = password_history.read(reader, setters, run.primary)
    if history.by_role:
        held = [(role, run.secret(role)[0]) for role in setters if run.has_secret(role)]
        retired = password_history.retired_problem(
            history, held, run.secrets_file.path.name, run.primary
        )
        found += [retired] if retired else []
    return findings, found


def require_forward(reader: Reader, run: RunContext, active: Sequence[Repeatable]) -> RunContext:
    """Refuse files that would move the database backwards; keep the positions to record.

    Decided from the database's own record, before any drain wait, so that
    a stale checkout is told at once and changes nothing.
    """
    findings, found = check(reader, run, active)
    if found:
        raise StaleFileError(
            "; ".join(p.removesuffix(". Nothing was changed") for p in found)
            + ". Nothing was changed"
        )
    return replace(run, positions=tuple(findings))
