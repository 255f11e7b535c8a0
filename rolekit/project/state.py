"""The rotation state: which members of each family may log in, per context.

It lives in one committed, reviewable JSON file (``migrations/rotation.json``
by default).  GitOps users edit it by hand; ``rolekit rotate`` edits it for
them.  ``alembic upgrade`` applies it through the family's login repeatable.

Phases follow from the ``login`` list:

* **steady** -- one member may log in;
* **overlap** -- both may, and ``incoming`` names the one with the fresh
  password that applications should move to.

The file is validated strictly when read, because a guard that trusts a
mistyped file is no guard: ``"decommissioned": "false"`` (a string) once
passed the lockout guard.  Every error names the path inside the file.

**Positions.**  Each state carries a ``serial``: its position in the
family's history in that context.  Every ``rotate`` phase advances it by
one, and so must a hand edit.  The database records the position each
upgrade applied (:mod:`rolekit.pg.positions`), so a file that is
behind it -- an old checkout, a rolled-back release, a revert -- is refused
instead of moving the database backwards.  The file's ``lineage`` (a random
id written once) tells one project's file from another's, like Terraform's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from rolekit._fileio import atomic_write, flocked, read_regular_file
from rolekit.errors import BusyError, RolekitError, RoleNameError, StateFileError
from rolekit.model.contexts import check_context_name
from rolekit.model.names import check_role_name

#: the version rolekit writes; version 1 (no positions, no lineage) is still read
STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: a state file larger than this is not one
MAX_STATE_BYTES = 4 * 1024 * 1024
_STATE_KEYS = frozenset({"login", "incoming", "retire", "decommissioned", "serial"})
_LINEAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class Retire(StrEnum):
    """What happens to the outgoing member at ``finish``."""

    NOLOGIN = "nologin"
    #: also ``VALID UNTIL '-infinity'``, so even a LOGIN by hand cannot use it
    EXPIRE = "expire"


class Phase(StrEnum):
    STEADY = "steady"
    OVERLAP = "overlap"
    DECOMMISSIONED = "decommissioned"
    LOCKED_OUT = "locked-out"


class FamilyState(NamedTuple):
    """The login state of one family in one context."""

    login: tuple[str, ...]
    incoming: str | None = None
    retire: Retire = Retire.NOLOGIN
    #: set explicitly to let a family have no login member (decommission)
    decommissioned: bool = False
    #: the position: every rotate phase (and hand edit) adds one
    serial: int = 0

    @property
    def phase(self) -> Phase:
        if not self.login:
            return Phase.DECOMMISSIONED if self.decommissioned else Phase.LOCKED_OUT
        return Phase.OVERLAP if len(self.login) > 1 else Phase.STEADY

    @property
    def preferred(self) -> str | None:
        """The member applications should use now."""
        if self.incoming:
            return self.incoming
        return self.login[0] if self.login else None

    def content(self) -> dict[str, Any]:
        """What the state says, without its position."""
        data: dict[str, Any] = {"login": list(self.login)}
        if self.incoming:
            data["incoming"] = self.incoming
        if self.retire != Retire.NOLOGIN:
            data["retire"] = str(self.retire)
        if self.decommissioned:
            data["decommissioned"] = True
        return data

    def to_json(self) -> dict[str, Any]:
        # A state nothing advanced yet reads as before positions existed.
        return {**self.content(), "serial": self.serial} if self.serial else self.content()

    @property
    def digest(self) -> str:
        """A short hash of :meth:`content`: two states at one position must agree on it."""
        canonical = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        """``login: my_app_tom, my_app_jerry (incoming my_app_jerry)``, for messages."""
        text = f"login: {', '.join(self.login) or 'none'}"
        if self.incoming:
            text += f" (incoming {self.incoming})"
        return text + (", decommissioned" if self.decommissioned else "")

    def advanced(self, login: tuple[str, ...], incoming: str | None = None) -> FamilyState:
        """The next position: *login* (and *incoming*), one serial further."""
        return FamilyState(login, incoming, self.retire, False, self.serial + 1)

    @classmethod
    def from_json(cls, where: str, data: Any) -> FamilyState:
        """Validate one state; *where* names it in messages (``rotation.json: families.x.dev``)."""
        if not isinstance(data, dict):
            raise StateFileError(f'{where}: expected an object like {{"login": ["member"]}}')
        unknown = sorted(set(data) - _STATE_KEYS)
        if unknown:
            raise StateFileError(
                f"{where}: unknown keys {unknown}; allowed: {', '.join(sorted(_STATE_KEYS))}"
            )
        login = _login(where, data.get("login"))
        incoming = _incoming(where, data.get("incoming"), login)
        retire = data.get("retire", Retire.NOLOGIN.value)
        if not isinstance(retire, str) or retire not in {r.value for r in Retire}:
            raise StateFileError(
                f"{where}.retire: expected one of {', '.join(repr(r.value) for r in Retire)}, "
                f"not {json.dumps(retire)}"
            )
        decommissioned = data.get("decommissioned", False)
        if not isinstance(decommissioned, bool):
            raise StateFileError(
                f"{where}.decommissioned: expected true or false (JSON booleans), "
                f"not {json.dumps(decommissioned)}"
            )
        if decommissioned and login:
            raise StateFileError(
                f"{where}: 'decommissioned' is true but 'login' lists members; empty 'login' "
                "to decommission the family, or remove 'decommissioned'"
            )
        serial = data.get("serial", 0)
        if not isinstance(serial, int) or isinstance(serial, bool) or not 0 <= serial < 2**53:
            raise StateFileError(
                f"{where}.serial: expected a whole number from 0 (the state's position; "
                f"every change adds one), not {json.dumps(serial)}"
            )
        return cls(login, incoming, Retire(retire), decommissioned, serial)


def _login(where: str, login: Any) -> tuple[str, ...]:
    if not isinstance(login, list):
        raise StateFileError(f"{where}.login: expected a list of member names")
    for index, member in enumerate(login):
        if not isinstance(member, str):
            raise StateFileError(f"{where}.login[{index}]: expected a role name (a string)")
        try:
            check_role_name(member, what=f"login[{index}]")
        except RoleNameError as exc:
            raise StateFileError(
                f"{where}.login lists roles that are not its members: {exc}"
            ) from None
    if len(set(login)) != len(login) or len(login) > 2:
        raise StateFileError(f"{where}.login: list at most two distinct members")
    return tuple(login)


def _incoming(where: str, incoming: Any, login: tuple[str, ...]) -> str | None:
    if incoming is not None and not isinstance(incoming, str):
        raise StateFileError(f"{where}.incoming: expected a member name (a string)")
    if incoming is not None and incoming not in login:
        raise StateFileError(f"{where}.incoming: {incoming!r} is not in 'login'")
    if len(login) == 2 and incoming is None:
        # Neither begin (already in overlap) nor finish (which member stays?)
        # could move on from here.
        raise StateFileError(
            f"{where}: both members may log in but 'incoming' is not set; set \"incoming\" "
            "to the member applications move to, so 'rotate finish' knows which one stays"
        )
    if len(login) == 1 and incoming is not None:
        raise StateFileError(
            f"{where}: 'incoming' is only meaningful while both members may log in; remove it"
        )
    return incoming


def _validate(
    name: str, raw: Any
) -> tuple[dict[str, dict[str, FamilyState]], dict[str, tuple[str, str]], str | None]:
    """The families' states, members and lineage of a parsed state file, checked."""
    if (
        not isinstance(raw, dict)
        or raw.get("version") not in _READABLE_VERSIONS
        or isinstance(raw.get("version"), bool)
    ):
        raise StateFileError(
            f'{name}: expected {{"version": {STATE_VERSION}, "families": {{...}}}}'
        )
    unknown = sorted(set(raw) - {"version", "lineage", "families", "members"})
    if unknown:
        raise StateFileError(f"{name}: unknown top-level keys {unknown}")
    lineage = raw.get("lineage")
    if lineage is not None and (not isinstance(lineage, str) or not _LINEAGE.fullmatch(lineage)):
        raise StateFileError(
            f"{name}: 'lineage' must be the project's id (letters, digits, '-' or '_', at "
            "most 64); rolekit writes it once, do not edit it"
        )
    families = {
        family: _states(f"{name}: families.{family}", contexts)
        for family, contexts in _by_family(name, raw, "families", "contexts").items()
    }
    members = {
        family: _pair(name, family, pair, families.get(family, {}))
        for family, pair in _by_family(name, raw, "members", "two member names").items()
    }
    return families, members, lineage


def new_lineage() -> str:
    """A fresh project id for a state file that has none."""
    return uuid.uuid4().hex


def _by_family(name: str, raw: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    """``raw[key]``, a map from family names (checked) to *what*."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise StateFileError(f"{name}: '{key}' must map family names to {what}")
    for family in value:
        check_role_name(family, what=f"{name}: family name")
    return value


def _states(where: str, contexts: Any) -> dict[str, FamilyState]:
    if not isinstance(contexts, dict):
        raise StateFileError(f"{where}: must map context names to states")
    states: dict[str, FamilyState] = {}
    for context, data in contexts.items():
        lowered = check_context_name(context)
        if lowered in states:
            raise StateFileError(
                f"{where}: contexts {context!r} and another spelling of it both appear; "
                "contexts are case-insensitive, keep one"
            )
        states[lowered] = FamilyState.from_json(f"{where}.{context}", data)
    return states


def _pair(name: str, family: str, pair: Any, states: dict[str, FamilyState]) -> tuple[str, str]:
    where = f"{name}: members.{family}"
    two = isinstance(pair, list) and len(pair) == 2 and all(isinstance(m, str) for m in pair)
    if not two or pair[0] == pair[1]:
        raise StateFileError(f"{where}: expected a list of two distinct member names")
    for member in pair:
        check_role_name(member, what=where)
    for context, state in states.items():
        strangers = sorted(set(state.login) - set(pair))
        if strangers:
            raise StateFileError(
                f"{name}: families.{family}.{context}.login lists {strangers}, which are "
                f"not its members ({', '.join(pair)})"
            )
    return (pair[0], pair[1])


def _no_duplicates(where: str) -> Any:
    """A ``json`` object hook that refuses duplicate keys (json keeps the last one)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise StateFileError(
                    f"{where}: key {key!r} appears twice in one object; JSON readers keep only "
                    "one of them, so it is ambiguous which is meant"
                )
            seen[key] = value
        return seen

    return hook


class RotationState:
    """The whole state file: ``{family: {context: FamilyState}}``, and each family's
    two members (``"members"``), so an application knows whom to fall back to
    without running the project's migration files."""

    def __init__(
        self,
        path: Path,
        families: dict[str, dict[str, FamilyState]] | None = None,
        members: dict[str, tuple[str, str]] | None = None,
        lineage: str | None = None,
    ):
        self.path = path
        self.families = families or {}
        self.members = members or {}
        #: the project's id (``None`` in a file written before rolekit kept one)
        self.lineage = lineage

    @classmethod
    def load(cls, path: Path) -> RotationState:
        if not path.exists() and not path.is_symlink():
            return cls(path)
        raw_bytes, _ = read_regular_file(
            path, MAX_STATE_BYTES, what=f"rotation state {path}", fail=StateFileError
        )
        try:
            raw = json.loads(raw_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates(str(path)))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateFileError(f"cannot read rotation state {path}: {exc}") from None
        return cls(path, *_validate(path.name, raw))

    def get(self, family: str, context: str) -> FamilyState | None:
        return self.families.get(family, {}).get(context.lower())

    def set(self, family: str, context: str, state: FamilyState) -> None:
        self.families.setdefault(family, {})[context.lower()] = state

    def contexts(self) -> frozenset[str]:
        """Every context the file holds a state for."""
        return frozenset(ctx for states in self.families.values() for ctx in states)

    def copy(self) -> RotationState:
        families = {f: dict(s) for f, s in self.families.items()}
        return RotationState(self.path, families, dict(self.members), self.lineage)

    def members_of(self, family: str) -> tuple[str, str] | None:
        """The family's two members: recorded, else named by its states (if two are)."""
        if family in self.members:
            return self.members[family]
        named: list[str] = []
        for state in self.families.get(family, {}).values():
            named += [member for member in state.login if member not in named]
        return (named[0], named[1]) if len(named) == 2 else None

    def outgoing(self, context: str) -> frozenset[str]:
        """The members leaving in *context*: in an overlap, those that are not incoming."""
        states = (by_context.get(context.lower()) for by_context in self.families.values())
        return frozenset(
            member
            for state in states
            if state is not None and state.phase == Phase.OVERLAP
            for member in state.login
            if member != state.incoming
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": STATE_VERSION}
        if self.lineage:
            data["lineage"] = self.lineage
        data |= {
            "families": {
                family: {ctx: st.to_json() for ctx, st in sorted(contexts.items())}
                for family, contexts in sorted(self.families.items())
            },
        }
        if self.members:
            data["members"] = {f: list(pair) for f, pair in sorted(self.members.items())}
        return data

    def render(self) -> str:
        """The file's text, as :meth:`save` writes it."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    def save(self) -> None:
        """Write atomically (fsynced), so a crash never leaves a torn file for a deploy.

        A file without a lineage gets one now: from here on the database can
        tell this project's file from another's.
        """
        self.lineage = self.lineage or new_lineage()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.render().encode("utf-8"), mode=0o644, fail=RolekitError)


def family_lock_path(path: Path, family: str) -> Path:
    """The lock file of *family*'s rotations beside the state file *path*
    (``rotation.json.my_app.lock``; a checked role name is a safe file name)."""
    return path.with_name(f"{path.name}.{check_role_name(family, what='family')}.lock")


@contextlib.contextmanager
def locked(path: Path, family: str) -> Iterator[None]:
    """Hold the exclusive lock of *family*'s rotations on the state file *path*, or refuse at once.

    One lock per family, not one per file: rotations of different families
    run at the same time (cron, a CI matrix, ``rotate --all``), while two runs
    of one family never interleave -- the second exits 4, whatever phase the
    first is in.  Their writes meet in :func:`update`, which changes only the
    family's own entries.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = family_lock_path(path, family)

    def busy(problem: str) -> Exception:
        return BusyError(
            f"cannot rotate {family}: another 'rolekit rotate' is running on this checkout for "
            f"{family} ({problem}); nothing was changed. Let it finish, then re-run"
        )

    with flocked(lock, fail=busy, wait=False):
        yield


def update(
    path: Path, family: str, states: dict[str, FamilyState], members: tuple[str, str]
) -> RotationState:
    """Write *family*'s *states* (by context) and *members* into the state file *path*.

    A read-modify-write under the file-wide lock (``rotation.json.lock``),
    held only for it -- never while waiting on a database: runs of other
    families that wrote since this one read the file keep their changes,
    and positions, lineage and every other family stay as the file has them.

    :returns: the state as written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)

    def unavailable(problem: str) -> Exception:
        return RolekitError(f"cannot write {path.name}: {problem}")

    with flocked(path.with_name(path.name + ".lock"), fail=unavailable):
        current = merged(RotationState.load(path), family, states, members)
        current.save()
        return current


def merged(
    state: RotationState, family: str, states: dict[str, FamilyState], members: tuple[str, str]
) -> RotationState:
    """A copy of *state* with *family*'s *states* (by context) and *members*: what an
    upgrade applies for a rotation of *family*, before :func:`update` records it."""
    result = state.copy()
    for context, family_state in states.items():
        result.set(family, context, family_state)
    result.members[family] = members
    return result
