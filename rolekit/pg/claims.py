"""Which database of a cluster manages a role.

Roles belong to the whole cluster, but rolekit's changelog lives in one
database.  Two projects in two databases that declare the same family would
overwrite each other's passwords, and each would then enable a member whose
password it no longer knows.  So the first database that manages a role
claims it, in the one cluster-wide place a migration user may write:
``COMMENT ON ROLE`` (``pg_shdescription``).  Another database is then
refused, unless told to take the role over (``-x take_over=FAMILY``).

A comment the role already had is kept; the claim is its last line::

    rolekit: managed from database "orders"
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from rolekit.pg.catalog import RoleInfo

_CLAIM = re.compile(r'^rolekit: managed from database (".*")$', re.M)


def claimed_by(info: RoleInfo) -> str | None:
    """The database that claimed *info*, or ``None``."""
    if not info.comment:
        return None
    found = _CLAIM.findall(info.comment)
    if not found:
        return None
    try:
        value = json.loads(found[-1])
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def claim_comment(info: RoleInfo | None, database: str) -> str:
    """The comment that claims the role for *database*, keeping any other text."""
    line = f"rolekit: managed from database {json.dumps(database)}"
    kept = _CLAIM.sub("", (info.comment or "") if info else "").strip()
    return f"{kept}\n{line}" if kept else line


def unclaimed_or_foreign(
    existing: Mapping[str, RoleInfo],
    names: Iterable[str],
    database: str,
    take_over: frozenset[str],
) -> tuple[list[str], list[str]]:
    """Split *names* into (to claim now, claimed by another database).

    A name in *take_over* is claimed now even if another database holds it.
    """
    to_claim: list[str] = []
    foreign: list[str] = []
    for name in names:
        info = existing.get(name)
        if info is None:
            continue
        owner = claimed_by(info)
        if owner == database:
            continue
        if owner is None or name in take_over:
            to_claim.append(name)
        else:
            foreign.append(name)
    return to_claim, foreign


def foreign_message(
    existing: Mapping[str, RoleInfo], foreign: Iterable[str], database: str, family: str
) -> str:
    owners = sorted({f"{name} by {claimed_by(existing[name])!r}" for name in foreign})
    return (
        f"role(s) of {family!r} are managed from another database of this cluster "
        f"({'; '.join(owners)}), not {database!r}; roles are cluster-wide, so two databases "
        "managing them would overwrite each other's passwords. Nothing was changed. If this "
        f"database should take them over, run once with -x take_over={family} (the other "
        "database's upgrades will then refuse)"
    )
