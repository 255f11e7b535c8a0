"""The rotation state: which members of each family may log in, per context.

It lives in one committed, reviewable JSON file (``migrations/rotation.json``
by default).  GitOps users edit it by hand; ``rolekit rotate`` edits it for
them.  ``alembic upgrade`` applies it through the family's login repeatable.

Phases follow from the ``login`` list:

* **steady** -- one member may log in;
* **overlap** -- both may, and ``incoming`` names the one with the fresh
  password that applications should move to.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolekit.errors import RotationStateError

STATE_VERSION = 1
#: what happens to the outgoing member's password at ``finish``
RETIRE_MODES = ("nologin", "expire")


@dataclass(frozen=True)
class FamilyState:
    """The login state of one family in one context."""

    login: tuple[str, ...]
    incoming: str | None = None
    retire: str = "nologin"
    #: set explicitly to let a family have no login member (decommission)
    decommissioned: bool = False

    @property
    def phase(self) -> str:
        if not self.login:
            return "decommissioned" if self.decommissioned else "locked-out"
        return "overlap" if len(self.login) > 1 else "steady"

    @property
    def preferred(self) -> str | None:
        """The member applications should use now."""
        if self.incoming:
            return self.incoming
        return self.login[0] if self.login else None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"login": list(self.login)}
        if self.incoming:
            data["incoming"] = self.incoming
        if self.retire != "nologin":
            data["retire"] = self.retire
        if self.decommissioned:
            data["decommissioned"] = True
        return data

    @classmethod
    def from_json(cls, where: str, data: Any) -> FamilyState:
        if not isinstance(data, dict) or not isinstance(data.get("login"), list):
            raise RotationStateError(f"{where}: expected an object with a 'login' list")
        login = tuple(data["login"])
        if not all(isinstance(m, str) for m in login) or len(set(login)) != len(login):
            raise RotationStateError(f"{where}: 'login' must list distinct role names")
        incoming = data.get("incoming")
        if incoming is not None and incoming not in login:
            raise RotationStateError(f"{where}: incoming member {incoming!r} is not in 'login'")
        retire = data.get("retire", "nologin")
        if retire not in RETIRE_MODES:
            raise RotationStateError(f"{where}: 'retire' must be one of {', '.join(RETIRE_MODES)}")
        unknown = set(data) - {"login", "incoming", "retire", "decommissioned"}
        if unknown:
            raise RotationStateError(f"{where}: unknown keys {sorted(unknown)}")
        return cls(login, incoming, retire, bool(data.get("decommissioned", False)))


class RotationState:
    """The whole state file: ``{family: {context: FamilyState}}``."""

    def __init__(self, path: Path, families: dict[str, dict[str, FamilyState]] | None = None):
        self.path = path
        self.families = families or {}

    @classmethod
    def load(cls, path: Path) -> RotationState:
        if not path.exists():
            return cls(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RotationStateError(f"cannot read rotation state {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise RotationStateError(
                f"{path}: expected {{'version': {STATE_VERSION}, 'families': ...}}"
            )
        families: dict[str, dict[str, FamilyState]] = {}
        for family, contexts in (raw.get("families") or {}).items():
            if not isinstance(contexts, dict):
                raise RotationStateError(f"{path}: families.{family} must map contexts to states")
            families[family] = {
                ctx.lower(): FamilyState.from_json(f"{path}: families.{family}.{ctx}", data)
                for ctx, data in contexts.items()
            }
        return cls(path, families)

    def get(self, family: str, context: str) -> FamilyState | None:
        return self.families.get(family, {}).get(context.lower())

    def set(self, family: str, context: str, state: FamilyState) -> None:
        self.families.setdefault(family, {})[context.lower()] = state

    def save(self) -> None:
        """Write atomically, so a crash never leaves a torn file for a deploy."""
        data = {
            "version": STATE_VERSION,
            "families": {
                family: {ctx: st.to_json() for ctx, st in sorted(contexts.items())}
                for family, contexts in sorted(self.families.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rotation.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, self.path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on *path*'s sibling lock file.

    Two ``rolekit rotate`` runs on one checkout then edit state and secrets
    one after the other instead of interleaving.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
