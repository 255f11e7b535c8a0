"""The phases of a rotation as edits of the state and secrets files.

``begin`` and ``finish`` only edit files; ``alembic upgrade`` (or the CLI's
``--apply``) makes the database follow, with the guards.  Both steps run under
one file lock, so two concurrent ``rolekit rotate ... begin`` on a checkout
cannot both succeed.
"""

from __future__ import annotations

from dataclasses import dataclass

from rolekit.errors import RotationStateError
from rolekit.family import RoleFamily
from rolekit.rotation.state import FamilyState, RotationState, locked
from rolekit.runtime.config import Settings
from rolekit.secrets import SecretsFile, generate_password


@dataclass(frozen=True)
class Transition:
    family: str
    context: str
    before: FamilyState
    after: FamilyState


def begin(settings: Settings, family: RoleFamily, context: str, *, length: int = 32) -> Transition:
    """steady on A -> overlap (A and B may log in; B has a fresh password)."""
    with locked(settings.state_file):
        state = RotationState.load(settings.state_file)
        current = state.get(family.group, context)
        if current is None:
            raise RotationStateError(
                f"{settings.state_file.name} has no state for {family.group!r} in context "
                f'{context!r}; add {{"login": ["{family.members[0]}"]}} first'
            )
        if current.phase != "steady":
            raise RotationStateError(
                f"cannot begin: {family.group!r} ({context}) is in phase {current.phase!r} "
                f"(login: {', '.join(current.login) or 'none'}); run 'rolekit rotate "
                f"{family.group} finish' first"
            )
        (active,) = current.login
        standby = family.other(active)
        secrets = SecretsFile(settings.secrets_file(context), repo_root=settings.root)
        secrets.set(standby, context, generate_password(max(length, settings.min_length(context))))
        secrets.ensure_fingerprint_key()
        after = FamilyState((active, standby), incoming=standby, retire=current.retire)
        state.set(family.group, context, after)
        state.save()
        return Transition(family.group, context, current, after)


def finish(settings: Settings, family: RoleFamily, context: str) -> Transition:
    """overlap -> steady on the incoming member."""
    with locked(settings.state_file):
        state = RotationState.load(settings.state_file)
        current = state.get(family.group, context)
        if current is None or current.phase != "overlap" or current.incoming is None:
            phase = current.phase if current else "unknown"
            raise RotationStateError(
                f"cannot finish: {family.group!r} ({context}) is in phase {phase!r}, not in a "
                f"rotation; run 'rolekit rotate {family.group} begin' first"
            )
        after = FamilyState((current.incoming,), retire=current.retire)
        state.set(family.group, context, after)
        state.save()
        return Transition(family.group, context, current, after)


def restore(settings: Settings, transition: Transition) -> None:
    """Put the state back after an ``--apply`` that changed nothing in the database."""
    with locked(settings.state_file):
        state = RotationState.load(settings.state_file)
        state.set(transition.family, transition.context, transition.before)
        state.save()
