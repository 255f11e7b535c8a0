"""Plans and applies repeatables inside the migration transaction.

A run reads the changelog and the catalog in a fixed number of round trips,
whatever the number of repeatables, resolves every secret it needs, and only
then executes anything.  A repeatable that fails aborts the transaction, so
the catalog and the changelog stay as they were.
"""

from __future__ import annotations

import importlib.util
import logging
import secrets as _random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rolekit import catalog
from rolekit.errors import RepeatableError, SecretsError
from rolekit.repeatable import changelog
from rolekit.repeatable.kinds import FamilyLogin, Repeatable, SetPasswords, Step
from rolekit.rotation.guard import Progress, stderr_progress
from rolekit.rotation.state import RotationState
from rolekit.runtime.config import Settings
from rolekit.runtime.session import Session
from rolekit.secrets import Secret, SecretsFile, check_strength, secret_key

log = logging.getLogger("rolekit")

PENDING, CHANGED, UNCHANGED, SKIPPED = "pending", "changed", "unchanged", "skipped"


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


@dataclass
class RunContext:
    """What a run knows: contexts, secrets, rotation state, guard settings."""

    settings: Settings
    contexts: frozenset[str]
    rotation: RotationState
    #: the context whose secrets and login state the run uses (the first given)
    primary: str | None = None
    salt: bytes = b""
    drain_timeout: float = 60.0
    terminate: bool = False
    progress: Progress = stderr_progress
    password_roles: set[str] = field(default_factory=set)
    _secrets: SecretsFile | None = None
    _fingerprint_key: bytes | None = None

    @property
    def secrets_file(self) -> SecretsFile:
        if self.primary is None:
            raise SecretsError("no context given: cannot choose which passwords to use")
        if self._secrets is None:
            self._secrets = SecretsFile(
                self.settings.secrets_file(self.primary), repo_root=self.settings.root
            )
        return self._secrets

    @property
    def fingerprint_key(self) -> bytes | None:
        """The secrets file's fingerprint key; without one, checksums fall back
        to slow scrypt fingerprints (about 50 ms per password per run)."""
        if self._fingerprint_key is None:
            key = self.secrets_file.fingerprint_key()
            if key is None:
                log.warning(
                    "rolekit: %s has no fingerprint key, so checksums use slow scrypt "
                    "fingerprints; 'rolekit gen-password ROLE --context %s --write' adds one",
                    self.secrets_file.path,
                    self.primary,
                )
            self._fingerprint_key = key or b""
        return self._fingerprint_key or None

    def has_secret(self, role: str) -> bool:
        return self.primary is not None and self.secrets_file.has(role, self.primary)

    def secret(self, role: str) -> tuple[Secret, str]:
        secrets_file = self.secrets_file  # raises when no context was given
        context = self.primary or ""
        value = secrets_file.get(role, context)
        try:
            check_strength(role, context, value, self.settings.min_length(context))
        except SecretsError as exc:
            raise SecretsError(f"secrets file {secrets_file.path}: {exc}") from None
        return value, secret_key(role, context)

    def must_log_in(self, role: str) -> bool:
        if self.primary is None:
            return False
        return any(
            role in states[self.primary].login
            for states in self.rotation.families.values()
            if self.primary in states
        )


@dataclass
class PlanItem:
    repeatable: Repeatable
    status: str
    reason: str
    checksum: str | None = None
    #: the steps to send (on a re-run, possibly only those that changed)
    steps: list[Step] = field(default_factory=list)
    #: digests of all the repeatable's steps, recorded in the changelog
    step_digests: list[str] = field(default_factory=list)

    @property
    def will_run(self) -> bool:
        return self.status in (PENDING, CHANGED)


@dataclass
class RunReport:
    items: list[PlanItem]
    #: (role, secret) pairs to verify by logging in once committed
    to_verify: list[tuple[str, Secret]] = field(default_factory=list)

    @property
    def executed(self) -> list[PlanItem]:
        return [i for i in self.items if i.will_run]


def plan(
    session: Session,
    run: RunContext,
    repeatables: list[Repeatable],
    log_state: changelog.Changelog,
    *,
    roles_must_exist: bool = True,
) -> list[PlanItem]:
    """Decide what each repeatable would do, resolving every secret first."""
    ordered = sorted(enumerate(repeatables), key=lambda p: (p[1].phase, p[0]))
    items: list[PlanItem] = []
    active: list[Repeatable] = []
    for _, rep in ordered:
        reason = rep.skip_reason(run)
        if reason is not None:
            items.append(PlanItem(rep, SKIPPED, reason))
        else:
            active.append(rep)
    targets = {t for rep in active for t in rep.targets()}
    existing = catalog.roles(session, targets) if targets and not session.offline else {}
    run.password_roles = {
        role
        for rep in active
        if isinstance(rep, SetPasswords)
        for role in rep.roles_with_passwords(run)
    }
    for rep in active:
        missing = [t for t in rep.targets() if t not in existing]
        if missing and not session.offline:
            if roles_must_exist:
                raise RepeatableError(
                    f"repeatable {rep.id!r} ({rep.source}) targets role(s) {', '.join(missing)} "
                    "that do not exist; create them in a revision first"
                )
            items.append(PlanItem(rep, PENDING, "its roles do not exist yet"))
            continue
        steps = rep.steps(run)
        digests = rep.step_digests(steps, run)
        checksum = rep.checksum(digests)
        entry = log_state.entries.get(rep.id)
        oids = tuple(existing[t].oid for t in rep.targets()) if not session.offline else ()
        if entry is None:
            status, reason = PENDING, "never ran"
        elif entry.target_oids != oids:
            status, reason = CHANGED, "its roles were dropped and re-created"
        elif entry.checksum != checksum:
            status, reason = CHANGED, "its checksum changed"
            if rep.rerun_changed_steps_only:  # same roles: skip what they already got
                sent_before = set(entry.step_digests)
                steps = [s for s, d in zip(steps, digests, strict=True) if d not in sent_before]
        elif rep.run_always:
            status, reason = CHANGED, "run_always"
        else:
            status, reason = UNCHANGED, "checksum unchanged"
        items.append(PlanItem(rep, status, reason, checksum, steps, digests))
    order = {id(rep): n for n, (_, rep) in enumerate(ordered)}
    items.sort(key=lambda i: order[id(i.repeatable)])
    return items


def apply(session: Session, run: RunContext, repeatables: list[Repeatable]) -> RunReport:
    """Plan and execute the repeatables that changed, recording each run."""
    state = changelog.read(session) if not session.offline else changelog.Changelog(False, b"", {})
    run.salt = state.salt or _random.token_bytes(16)
    items = plan(session, run, repeatables, state)
    for item in items:
        if item.status == SKIPPED:
            log.info("rolekit: skipped %s: %s", item.repeatable.id, item.reason)
    report = RunReport(items)
    if not report.executed:
        return report
    if session.offline:
        secret = next((i for i in report.executed for s in i.steps if s.secret is not None), None)
        if secret is not None:
            raise RepeatableError(
                f"refusing to write a password verifier into an offline script (repeatable "
                f"{secret.repeatable.id!r}); run the upgrade online, or offline without that context"
            )
    if not session.offline:
        migrated = changelog.ensure(session, state, salt=run.salt)
        if migrated.version != state.version:  # an older schema was just migrated
            report = RunReport(plan(session, run, repeatables, migrated))
    for item in report.executed:
        rep = item.repeatable
        log.info("rolekit: running %s (%s: %s)", rep.id, item.status, item.reason)
        started = time.monotonic()
        rep.apply(session, run, item.steps)
        if session.offline:
            continue
        oids = catalog.roles(session, rep.targets()) if rep.targets() else {}
        changelog.record(
            session,
            id=rep.id,
            checksum=item.checksum or "",
            context_expression=rep.context.text if rep.context else None,
            context_used=",".join(sorted(run.contexts)) or None,
            exec_type="executed" if item.status == PENDING else "reran",
            duration_ms=(time.monotonic() - started) * 1000,
            target_oids=[oids[t].oid for t in rep.targets()],
            step_digests=item.step_digests,
            passwords_set=[s.secret_role for s in item.steps if s.secret_role],
        )
        if isinstance(rep, SetPasswords):
            report.to_verify += [
                (s.secret_role, s.secret)
                for s in item.steps
                if s.secret is not None
                and s.secret_role is not None
                and run.must_log_in(s.secret_role)
            ]
    return report


def login_members(repeatables: list[Repeatable]) -> dict[str, FamilyLogin]:
    """The FamilyLogin repeatables by group name."""
    return {r.family.group: r for r in repeatables if isinstance(r, FamilyLogin)}
