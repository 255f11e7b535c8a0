"""What one run of the repeatables knows before it starts.

A :class:`RunContext` is built once per ``alembic upgrade`` (or ``rolekit
plan``/``check``) from the command line, the project's files and what
rolekit saw on the control connection before the migration transaction.  It
is immutable: planning returns what it finds (:class:`Observed`) instead of
writing it here, and the fingerprint salt is passed in with
:func:`dataclasses.replace`.  It knows nothing of the kinds of repeatable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from rolekit.deployment.common import Progress, stderr_progress
from rolekit.errors import SecretsError
from rolekit.pg.catalog import Reader, RoleInfo
from rolekit.pg.positions import Finding
from rolekit.project.config import DEFAULT_DRAIN_QUIET_PERIOD, DEFAULT_DRAIN_TIMEOUT, Settings
from rolekit.project.state import RotationState
from rolekit.secrets import Secret, SecretsFile, check_strength, secret_key

log = logging.getLogger(__name__)


class DeploymentCheck(Protocol):
    """The drain's last look at every host and pooler (see
    :meth:`rolekit.deployment.deployment.Deployment.decisive_check`)."""

    def __call__(self, primary: Reader, members: Sequence[str], within: float) -> None: ...


class UsesLook(Protocol):
    """One look at every place that shows uses of *members* (sessions on every
    host, pooler clients, tracked logins), the primary read through *primary*:
    a description of the uses of each member in use (empty: none is)."""

    def __call__(self, primary: Reader, members: Sequence[str]) -> dict[str, str]: ...


class PasswordChecks(Protocol):
    """Logins as the members that may log in (:class:`rolekit.pg.logins.PasswordDrift`)."""

    verified: frozenset[str]

    def __call__(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class RunContext:
    """Contexts, rotation state, guard settings and secrets access of one run."""

    settings: Settings
    contexts: frozenset[str]
    rotation: RotationState
    #: the context whose secrets and login state the run uses (the first given)
    primary: str | None = None
    #: the per-database salt of the secret fingerprints (from the changelog)
    salt: bytes = b""
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: seconds a leaving member must go unseen before it is disabled
    drain_quiet_period: float = DEFAULT_DRAIN_QUIET_PERIOD
    terminate: bool = False
    progress: Progress = stderr_progress
    #: families or roles this database may claim from another one (-x take_over)
    take_over: frozenset[str] = frozenset()
    #: repeatable ids to run whatever their checksum (-x rerun)
    rerun: frozenset[str] = frozenset()
    #: send verifiers even where the server logs them (-x allow_verifier_in_log)
    allow_verifier_in_log: bool = False
    #: members whose drain timed out with terminate: they are ended after the commit
    terminate_after_commit: frozenset[str] = frozenset()
    #: finds the LOGIN members that reject the secrets file's password (a login
    #: test that runs while the migration starts; calling it waits for it)
    password_checks: PasswordChecks | None = None
    #: members the drain found unused (they are disabled in this run)
    retiring: frozenset[str] = frozenset()
    #: set once the drain ran: looks at every host and pooler once more
    deployment_check: DeploymentCheck | None = None
    #: set before the migration: who uses a member now, everywhere it can be used
    uses_look: UsesLook | None = None
    #: members whose password an upgrade may replace although they are in use
    #: (-x replace_password: an emergency, it breaks their applications)
    replace_password: frozenset[str] = frozenset()
    #: the members of the families a ``rolekit rotate`` moves: its upgrade runs
    #: only the repeatables that target one of them, so that a rotation of one
    #: family never applies another family's files (``None``: every repeatable,
    #: as a deploy's upgrade does)
    scope: frozenset[str] | None = None
    #: the state file's position against the database's, per family (checked
    #: before the migration; the positions that move are recorded in it)
    positions: tuple[Finding, ...] = ()
    #: set by the engine while the repeatables run: the members their decisive
    #: checks name, looked at once after the last of them (see :meth:`decisive_check`)
    deferred_checks: list[str] | None = field(default=None, repr=False, compare=False)
    #: caches of the secrets file (filled on first use, never by callers)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def password_drift(self) -> frozenset[str]:
        """LOGIN members whose login with the secrets file's password was rejected."""
        return self.password_checks() if self.password_checks is not None else frozenset()

    @property
    def password_verified(self) -> frozenset[str]:
        """LOGIN members that accepted the secrets file's password: the server has it."""
        if self.password_checks is None:
            return frozenset()
        self.password_checks()  # waits for the logins
        return self.password_checks.verified

    @property
    def secrets_file(self) -> SecretsFile:
        if self.primary is None:
            raise SecretsError("no context given: cannot choose which passwords to use")
        if "secrets" not in self._cache:
            self._cache["secrets"] = SecretsFile(
                self.settings.secrets_file(self.primary), repo_root=self.settings.root
            )
        secrets: SecretsFile = self._cache["secrets"]
        return secrets

    @property
    def fingerprint_key(self) -> bytes | None:
        """The secrets file's fingerprint key, added to a plaintext file that has none.

        A ``passwords.env`` filled in by hand has no key; rolekit adds one (the
        file is rewritten atomically, every other byte kept), so checksums are
        a fast keyed HMAC instead of scrypt (about 50 ms and 16 MiB per
        password per run).  An age file is committed and shared: rolekit does
        not rewrite it during an upgrade, and without a key it keeps scrypt.
        """
        if "key" not in self._cache:
            secrets = self.secrets_file
            key = secrets.fingerprint_key()
            if key is None and not secrets.encrypted:
                secrets.ensure_fingerprint_key()
                key = secrets.fingerprint_key()
                log.info("added a fingerprint key to %s (fast keyed checksums)", secrets.path)
            elif key is None:
                log.warning(
                    "%s has no fingerprint key, so checksums use slow scrypt fingerprints; "
                    "'rolekit gen-password ROLE --context %s --write' adds one",
                    secrets.path,
                    self.primary,
                )
            self._cache["key"] = key
        found: bytes | None = self._cache["key"]
        return found

    def _on_file(self) -> dict[str, Secret] | None:
        """Every non-empty password of the secrets file, read once per run (``None``:
        no file, or one that cannot be read: then each ask goes to the file, whose
        error names the key and the context).  A run asks for each member's
        password several times; each ask of :class:`SecretsFile` stats the file."""
        if "on_file" not in self._cache:
            path = self.secrets_file.path
            try:
                exists = path.exists() or path.is_symlink()  # load() refuses a symlink
                self._cache["on_file"] = self.secrets_file.load() if exists else None
            except SecretsError:
                self._cache["on_file"] = None
        on_file: dict[str, Secret] | None = self._cache["on_file"]
        return on_file

    def has_secret(self, role: str) -> bool:
        if self.primary is None:
            return False
        on_file = self._on_file()
        if on_file is None:  # no file (False), or a broken one (raises, naming the key)
            return self.secrets_file.has(role, self.primary)
        return secret_key(role, self.primary) in on_file

    def secret(self, role: str) -> tuple[Secret, str]:
        secrets_file = self.secrets_file  # raises when no context was given
        context = self.primary or ""
        key = secret_key(role, context)
        on_file = self._on_file()
        # not on file: get() raises, naming what is wrong (missing, empty, broken...)
        value = on_file[key] if on_file and key in on_file else secrets_file.get(role, context)
        try:
            check_strength(role, context, value, self.settings.min_length(context))
        except SecretsError as exc:
            raise SecretsError(f"secrets file {secrets_file.path}: {exc}") from None
        return value, key

    def decisive_check(self, session: Reader, members: Sequence[str]) -> None:
        """Refuse (inside the transaction, after ``NOLOGIN``) if *members* are in use anywhere.

        While the engine runs the repeatables, the members are only gathered:
        one look for all, after the last ``NOLOGIN`` and still inside the
        transaction, sees at least what a look after each would have seen.
        """
        if self.deferred_checks is not None:
            self.deferred_checks.extend(members)
            return
        if self.deployment_check is not None:
            self.deployment_check(session, members, self.drain_quiet_period)
        else:
            # imported here: only a run that disables a member drains
            from rolekit.deployment.drain import decisive_check

            decisive_check(session, members)

    def must_log_in(self, role: str) -> bool:
        """Whether the rotation state lets *role* log in, in the run's context."""
        if self.primary is None:
            return False
        # Asked for every role: one pass over the families, not one per role.
        # Keyed by the state and context, which replace() may change (the
        # cache dict is shared with copies).
        cached = self._cache.get("login")
        if cached is None or cached[0] is not self.rotation or cached[1] != self.primary:
            members = frozenset(
                member
                for states in self.rotation.families.values()
                if self.primary in states
                for member in states[self.primary].login
            )
            cached = self._cache["login"] = (self.rotation, self.primary, members)
        return role in cached[2]


class Observed(NamedTuple):
    """What the planner read from the catalog and found in the plan, for the repeatables."""

    roles: Mapping[str, RoleInfo]
    #: roles whose password a SetPasswords repeatable sets in this context
    password_roles: frozenset[str] = frozenset()
    #: roles whose password this run sends before any login change
    passwords_sent: frozenset[str] = frozenset()
    server_version: int = 0
