"""Where credentials come from: a rolekit project's files, a mounted credentials
file, or environment variables.

A source is a ``fetch`` (returns :class:`Credentials`) and, where it can tell
cheaply that it changed, a ``stamp``.  The project source reads the family's
members from ``rotation.json`` (or is given them): it never imports the
project's migration files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rolekit._fileio import file_stamp, read_regular_file
from rolekit.errors import RolekitError
from rolekit.project.credentials import Credentials, shown
from rolekit.project.document import read_document
from rolekit.project.state import RotationState
from rolekit.secrets import SecretsFile, secret_key

logger = logging.getLogger(__name__)

_ENV_PREFIX_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _members(
    family: str, members: Sequence[str] | None, state_file: Path
) -> tuple[str, str] | None:
    """The family's two members: given, else recorded in (or named by) the state file."""
    if members is not None:
        found = tuple(members)
        if isinstance(members, str) or len(found) != 2 or found[0] == found[1]:
            raise ValueError(f"family {family!r}: members must be two distinct role names")
        return (found[0], found[1])
    return RotationState.load(state_file).members_of(family)


@dataclass(frozen=True)
class ProjectSource:
    """The rotation state plus the secrets file, read together."""

    family: str
    context: str
    state_file: Path
    secrets: SecretsFile
    members: tuple[str, str] | None

    @classmethod
    def open(
        cls,
        family: str,
        context: str,
        state_file: Path,
        secrets_file: Path,
        members: Sequence[str] | None,
    ) -> ProjectSource:
        known = _members(family, members, state_file)
        if known is None:
            logger.warning(
                "family %s: its two members are unknown (pass members=..., or let rolekit record "
                "them in %s), so there is no other member to fall back to",
                family,
                state_file.name,
            )
        return cls(family, context.lower(), state_file, SecretsFile(secrets_file), known)

    @property
    def description(self) -> str:
        return f"{self.state_file} and {self.secrets.path} ({self.family}, context {self.context})"

    def stamp(self) -> Hashable:
        return (file_stamp(self.state_file), file_stamp(self.secrets.path))

    def fetch(self) -> Credentials:
        state = RotationState.load(self.state_file).get(self.family, self.context)
        if state is None:
            raise RolekitError(
                f"{self.state_file} has no state for family {self.family!r} in context "
                f"{self.context!r}"
            )
        preferred = state.preferred
        if preferred is None:
            raise RolekitError(
                f"{self.state_file}: no member of {self.family!r} may log in in context "
                f"{self.context!r}"
            )
        if self.members is not None and preferred not in self.members:
            raise RolekitError(
                f"{self.state_file}: {preferred!r} is not a member of {self.family!r} "
                f"({', '.join(self.members)})"
            )
        if self.members is not None:
            alternate: str | None = next(m for m in self.members if m != preferred)
        else:
            alternate = next((m for m in state.login if m != preferred), None)
        # One load, so both passwords come from the same version of the file.
        values = self.secrets.load()
        password = values.get(secret_key(preferred, self.context))
        if password is None:
            password = self.secrets.get(preferred, self.context)  # raises, with a clear message
        other = None
        if alternate is not None:
            alt_password = values.get(secret_key(alternate, self.context))
            if alt_password is not None:
                other = (alternate, alt_password)
        return Credentials((preferred, password), other)


def env_source(prefix: str, environ: Mapping[str, str] | None) -> Callable[[], Credentials]:
    """``<PREFIX>_USER``/``_PASSWORD`` and the optional ``_ALT_`` pair, read on each call."""
    if not _ENV_PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"environment prefix {prefix!r} is not a valid variable name prefix")
    env = os.environ if environ is None else environ
    names = [f"{prefix}_{suffix}" for suffix in ("USER", "PASSWORD", "ALT_USER", "ALT_PASSWORD")]

    def fetch() -> Credentials:
        user, password, alt_user, alt_password = (env.get(name) or None for name in names)
        for name, value in zip(names[:2], (user, password), strict=True):
            if value is None:
                raise RolekitError(f"environment variable {name} is not set or empty")
        if (alt_user is None) != (alt_password is None):
            raise RolekitError(f"set both {names[2]} and {names[3]}, or neither")
        assert user is not None and password is not None
        return Credentials.of(user, password, alt_user, alt_password)

    return fetch


#: a credentials document larger than this is refused (it cannot be one)
_MAX_DOCUMENT_BYTES: Final = 64 * 1024


@dataclass
class _Pin:
    """A field of the document every version must keep: given, or learned from the first."""

    key: str
    value: str | None = None
    known: bool = False

    @classmethod
    def of(cls, key: str, given: str | None) -> _Pin:
        return cls(key, given, given is not None)

    def check(self, found: str | None, where: str) -> None:
        if self.known and found != self.value:
            raise RolekitError(
                f"{where} is a document for {self.key} {shown(found)}, not {shown(self.value)}; "
                "refusing it"
            )

    def learn(self, found: str | None) -> None:
        if not self.known:
            self.value, self.known = found, True


class FileSource:
    """A credentials document (``rolekit creds --format json``) in a mounted file.

    Kubernetes Secret volumes, Vault Agent and CSI drivers update such a file
    by swapping a symlink (``..data``) to a new directory, so the file is read
    through symlinks, and its stamp (of the file they point at) shows the
    swap by its new inode.

    Whoever publishes to the file is not trusted to publish the right family:
    a document whose ``family`` or ``context`` differs from *family* and
    *context* (when not given: from those of the first document read) is
    refused, so a publish to the wrong file cannot move the application to
    another family's role.  :meth:`fetch` need not be thread-safe (the
    provider serialises it).
    """

    def __init__(self, path: Path, family: str | None = None, context: str | None = None) -> None:
        self.path = path
        self._pins = (
            _Pin.of("family", family),
            _Pin.of("context", context.lower() if context is not None else None),
        )

    @property
    def description(self) -> str:
        return f"credentials file {self.path}"

    def stamp(self) -> Hashable:
        return file_stamp(self.path)

    def fetch(self) -> Credentials:
        raw, _info = read_regular_file(
            self.path,
            _MAX_DOCUMENT_BYTES,
            what=str(self.path),
            fail=RolekitError,
            follow_symlinks=True,
        )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RolekitError(f"{self.path} is not UTF-8 text") from None
        document = read_document(text, str(self.path))
        context = document.context.lower() if document.context is not None else None
        found = (document.family, context)
        for pin, value in zip(self._pins, found, strict=True):
            pin.check(value, str(self.path))
        for pin, value in zip(self._pins, found, strict=True):
            pin.learn(value)
        return document.credentials
