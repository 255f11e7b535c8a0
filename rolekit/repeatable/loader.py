"""Finding the project's repeatables, and what they tell about the project.

``migrations/repeatable/*.py`` each declare a module-level ``REPEATABLES``
list.  From them rolekit learns the families a project manages and the
contexts it knows, which is how a mistyped ``-x context=prdo`` is refused
instead of silently applying nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from rolekit.errors import ContextExpressionError, RepeatableError, SecretsError
from rolekit.model.contexts import parse_contexts
from rolekit.project.config import Settings
from rolekit.project.state import RotationState
from rolekit.repeatable.base import Repeatable
from rolekit.repeatable.kinds import FamilyLogin
from rolekit.secrets import SecretsFile, contexts_in


def load_repeatables(folder: Path) -> list[Repeatable]:
    """Import ``*.py`` in *folder* (sorted by name) and collect ``REPEATABLES``."""
    found: list[Repeatable] = []
    seen: dict[str, str] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"rolekit_repeatables_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        declared = getattr(module, "REPEATABLES", None)
        if not isinstance(declared, list | tuple):
            raise RepeatableError(f"{path}: expected a module-level REPEATABLES list")
        for rep in declared:
            if not isinstance(rep, Repeatable):
                raise RepeatableError(f"{path}: {rep!r} in REPEATABLES is not a repeatable")
            if rep.id in seen:
                raise RepeatableError(
                    f"duplicate repeatable id {rep.id!r} in {path.name} and {seen[rep.id]}"
                )
            seen[rep.id] = path.name
            rep.source = path.name
            found.append(rep)
    return found


def login_members(repeatables: Iterable[Repeatable]) -> dict[str, FamilyLogin]:
    """The FamilyLogin repeatables by group name."""
    return {r.family.group: r for r in repeatables if isinstance(r, FamilyLogin)}


def known_contexts(
    settings: Settings, repeatables: Iterable[Repeatable], rotation: RotationState
) -> set[str]:
    """Every context the project mentions: in a repeatable's expression, the
    rotation state, ``[rolekit]`` settings or a key of the default secrets file."""
    known = set(rotation.contexts())
    known |= set(settings.secrets_files) | set(settings.min_password_length)
    for rep in repeatables:
        if rep.context is not None:
            known |= rep.context.names()
    return known


def require_known_contexts(
    raw: str | None,
    settings: Settings,
    repeatables: Iterable[Repeatable],
    rotation: RotationState,
) -> None:
    """Refuse a context no repeatable, secrets key or rotation state mentions.

    ``-x context=prdo`` would otherwise exit 0 having applied nothing that is
    context-specific.  The default secrets file is read only when the other
    sources do not know the context.
    """
    given = parse_contexts(raw)
    if not given:
        return
    repeatables = list(repeatables)
    known = known_contexts(settings, repeatables, rotation)
    unknown = sorted(given - known)
    if unknown and settings.default_secrets_file.exists():
        # An unreadable file knows nothing; the run reports it if it needs it.
        with contextlib.suppress(SecretsError):
            known |= contexts_in(SecretsFile(settings.default_secrets_file))
        unknown = sorted(given - known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ContextExpressionError(
            f"unknown context {', '.join(repr(u) for u in unknown)}: no repeatable, secrets key "
            f"or rotation state mentions it (known contexts: {listed}); nothing was done"
        )


def require_known_ids(given: Iterable[str], known: Iterable[str], *, unknown_is: str) -> None:
    """Refuse repeatable ids that are not *known*, listing the known ones.

    The one rule for ``-x rerun=ID`` and ``rolekit clear-checksums ID``: a
    mistyped id otherwise does nothing and says nothing.

    :param unknown_is: what an unknown id lacks and what was not done, e.g.
        ``"no changelog entry for {ids}; nothing was cleared"``.
    """
    known = set(known)
    unknown = sorted(set(given) - known)
    if unknown:
        ids = ", ".join(map(repr, unknown))
        raise RepeatableError(
            f"{unknown_is.format(ids=ids)} (known: {', '.join(sorted(known)) or 'none'})"
        )
