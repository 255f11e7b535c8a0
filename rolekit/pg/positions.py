"""Time only moves forward: the database's record of how far each rotation went.

The files are the user's intent; the database is the truth of what
happened.  A state file from an old checkout, a rolled-back release or a
``git revert`` would otherwise re-enable a member whose password was retired
and lock out every application on the current one.  So every upgrade that
applies a family's state records its position (the state's ``serial``, a
digest of what it says, the file's lineage, when and by whom) in
``rolekit_rotation``, and every later run compares the file with it
**before anything else** -- before any drain wait:

* **behind** (a lower serial): refused;
* **diverged** (the same serial, other content: two branches advanced from
  one position, or a hand edit that did not add one to ``serial``): refused;
* **foreign** (another project's lineage): refused unless ``-x
  take_over=FAMILY``;
* **ahead** or **new**: applied and recorded.

A database restored from a backup is simply behind the files, which then
win and converge it forward.  Positions belong to the family's group role as
it exists now (its OID): a family dropped by ``alembic downgrade`` and
created again starts from the file, like its changelog entries.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from psycopg2 import sql

from rolekit.errors import StaleFileError
from rolekit.pg.catalog import Reader, table_exists
from rolekit.project.state import FamilyState, RotationState

#: the tables of positions; absent until the first upgrade that records one
POSITIONS_TABLE = "rolekit_rotation"
_HISTORY_TABLE = "rolekit_rotation_history"


class Applied(NamedTuple):
    """The last position the database applied for one family in one context."""

    family: str
    context: str
    serial: int
    digest: str
    lineage: str | None
    #: what that state said (``login: ...``), for messages
    described: str
    applied_at: dt.datetime
    applied_by: str


class Verdict(StrEnum):
    NEW = "new"
    SAME = "same"
    AHEAD = "ahead"
    BEHIND = "behind"
    DIVERGED = "diverged"
    FOREIGN = "foreign"

    @property
    def refused(self) -> bool:
        return self in (Verdict.BEHIND, Verdict.DIVERGED, Verdict.FOREIGN)

    @property
    def recorded(self) -> bool:
        """Whether applying the file moves the recorded position."""
        return self in (Verdict.NEW, Verdict.AHEAD)


Positions = dict[tuple[str, str], Applied]


def _described(raw: Any) -> str:
    try:
        return FamilyState.from_json("recorded state", raw).describe()
    except Exception:  # a row written by a newer rolekit: show it as it is
        return json.dumps(raw, sort_keys=True)


def read(reader: Reader, families: Iterable[str]) -> Positions:
    """The recorded positions of *families* (every context): one round trip,
    two when the table exists."""
    names = sorted(set(families))
    if not names or not table_exists(reader, POSITIONS_TABLE):
        return {}
    rows = reader.fetchall(
        sql.SQL(
            "SELECT p.family, p.context, p.serial, p.digest, p.lineage, p.state, p.applied_at,"
            " p.applied_by FROM {} p JOIN pg_roles g ON g.rolname = p.family"
            " AND g.oid = p.group_oid WHERE p.family = ANY(%s)"
        ).format(sql.Identifier(POSITIONS_TABLE)),
        (names,),
    )
    return {
        (family, context): Applied(
            family, context, int(serial), digest, lineage, _described(state), at, by
        )
        for family, context, serial, digest, lineage, state, at, by in rows
    }


def judge(state: FamilyState, lineage: str | None, applied: Applied | None) -> Verdict:
    """Where the file's *state* stands against what the database applied."""
    if applied is None:
        return Verdict.NEW
    if lineage and applied.lineage and lineage != applied.lineage:
        return Verdict.FOREIGN
    if state.serial < applied.serial:
        return Verdict.BEHIND
    if state.serial == applied.serial:
        return Verdict.SAME if state.digest == applied.digest else Verdict.DIVERGED
    return Verdict.AHEAD


class Finding(NamedTuple):
    """One family's file against the database."""

    family: str
    context: str
    verdict: Verdict
    state: FamilyState
    applied: Applied | None
    #: the file's lineage
    lineage: str | None = None


def compare(
    rotation: RotationState,
    families: Iterable[str],
    context: str,
    positions: Positions,
    take_over: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Each family's verdict in *context* (families the file has no state for are left out).

    A family named in *take_over* is never foreign: its positions start again
    from this project's file.
    """
    findings = []
    for family in sorted(set(families)):
        state = rotation.get(family, context)
        if state is None:
            continue
        applied = positions.get((family, context.lower()))
        if family in take_over and applied is not None and applied.lineage != rotation.lineage:
            verdict = Verdict.AHEAD
        else:
            verdict = judge(state, rotation.lineage, applied)
        findings.append(Finding(family, context.lower(), verdict, state, applied, rotation.lineage))
    return findings


def _when(applied: Applied) -> str:
    at = applied.applied_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"applied {at} by {applied.applied_by!r}"


def problem(finding: Finding, filename: str) -> str:
    """What is wrong with a refused *finding*, and how to get back on track."""
    state, applied = finding.state, finding.applied
    assert applied is not None
    where = f"family {finding.family!r} (context {finding.context})"
    theirs = f"the database is at position {applied.serial} ({applied.described}; {_when(applied)})"
    if finding.verdict == Verdict.FOREIGN:
        return (
            f"{filename} belongs to another project than the one that manages {where}: its "
            f"lineage is {finding.lineage!r}, {theirs} from lineage "
            f"{applied.lineage!r}. If this project now manages the family, run the upgrade "
            f"with -x take_over={finding.family}"
        )
    ours = f"{filename} is at position {state.serial} ({state.describe()})"
    if finding.verdict == Verdict.BEHIND:
        behind = applied.serial - state.serial
        return (
            f"{filename} is stale for {where}: {ours}, {behind} position(s) behind; {theirs}. "
            "It comes from an older checkout, a rolled-back release or a revert. Get the "
            f"current {filename} back (git pull, or check out the commit whose {filename} has "
            f'"serial": {applied.serial}); to change the state on purpose, start from that '
            f'file and set "serial" to {applied.serial + 1}'
        )
    return (
        f"{filename} has diverged from the database for {where}: {ours}, but {theirs} with "
        "other content at the same position. Two branches advanced from one position, or the "
        'file was edited by hand without adding one to "serial". Merge the file that '
        f'applied position {applied.serial}, then change it and set "serial" to '
        f"{applied.serial + 1}"
    )


def problems(findings: Sequence[Finding], filename: str) -> list[str]:
    return [problem(f, filename) for f in findings if f.verdict.refused]


def require_current(findings: Sequence[Finding], filename: str) -> None:
    """Refuse (exit 3, nothing changed) when any family's file is behind,
    diverged or foreign."""
    found = problems(findings, filename)
    if found:
        raise StaleFileError("; ".join(found) + ". Nothing was changed")


def record(
    session: Any, findings: Sequence[Finding], lineage: str | None
) -> list[tuple[str, str, int]]:
    """Record the positions the file moves forward (inside the migration transaction).

    :returns: (family, context, serial) of each position recorded.
    """
    moved = [f for f in findings if f.verdict.recorded]
    if not moved:
        return []
    # Two statements for all the families (a family is recorded once per
    # context: the last finding wins, as one upsert after another would).
    latest = {(f.family, f.context): f for f in moved}
    rows = sql.SQL(
        "SELECT s.family, r.oid, s.context, s.serial, s.digest, %s::text, s.state::jsonb"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[])"
        " WITH ORDINALITY AS s(family, context, serial, digest, state, n)"
        " JOIN pg_roles r ON r.rolname = s.family ORDER BY s.n"
    )

    def columns(chosen: Sequence[Finding]) -> tuple[Any, ...]:
        return (
            lineage,
            [f.family for f in chosen],
            [f.context for f in chosen],
            [f.state.serial for f in chosen],
            [f.state.digest for f in chosen],
            [json.dumps(f.state.content()) for f in chosen],
        )

    session.execute(
        sql.SQL(
            "INSERT INTO {} (family, group_oid, context, serial, digest, lineage, state) {}"
            " ON CONFLICT (family, context) DO UPDATE SET group_oid = EXCLUDED.group_oid,"
            " serial = EXCLUDED.serial, digest = EXCLUDED.digest, lineage = EXCLUDED.lineage,"
            " state = EXCLUDED.state, applied_at = now(), applied_by = session_user"
        ).format(sql.Identifier(POSITIONS_TABLE), rows),
        columns(list(latest.values())),
        echo=False,
    )
    session.execute(
        sql.SQL(
            "INSERT INTO {} (family, group_oid, context, serial, digest, lineage, state) {}"
        ).format(sql.Identifier(_HISTORY_TABLE), rows),
        columns(moved),
        echo=False,
    )
    return [(f.family, f.context, f.state.serial) for f in moved]
