"""The kinds of repeatable a project can declare.

A repeatable turns the declared state into :class:`Step` s.  The engine
checksums those steps (secrets replaced by keyed fingerprints), so a
repeatable re-runs exactly when what it would do changes: a new password in
the secrets file changes its checksum, reformatting its source does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from rolekit import ddl
from rolekit._names import check_role_name
from rolekit.contexts import ContextExpression
from rolekit.errors import LockoutError, PasswordMissingError, RepeatableError
from rolekit.family import RoleFamily
from rolekit.rotation.guard import drain
from rolekit.runtime.session import render_offline
from rolekit.secrets import Secret, fingerprint

if TYPE_CHECKING:
    from rolekit.repeatable.engine import RunContext
    from rolekit.runtime.session import Session

#: bump when the rendering of steps changes, so checksums stay comparable
CHECKSUM_VERSION = "1"


@dataclass(frozen=True)
class Step:
    """One statement; *secret* is a password to send as a SCRAM verifier."""

    stmt: sql.Composable
    secret_role: str | None = None
    secret: Secret | None = field(default=None, compare=False)
    secret_key: str | None = None


class Repeatable:
    """Base class: an idempotent operation the engine re-runs on change.

    :param id: unique across the project; the changelog's key.
    :param context: a context expression (``"dev or local"``); a repeatable
        with one runs only when a matching context is given.
    :param run_always: run on every upgrade instead of only on change.
    """

    #: repeatables of a later phase run after earlier ones (login changes last)
    phase = 0

    def __init__(self, id: str, *, context: str | None = None, run_always: bool = False) -> None:
        if not isinstance(id, str) or not id.strip() or len(id) > 200:
            raise RepeatableError(
                f"repeatable id {id!r} must be a non-empty string of at most 200 chars"
            )
        self.id = id
        self.context = ContextExpression.parse(context) if context is not None else None
        self.run_always = run_always
        self.source = "<unknown>"

    def targets(self) -> tuple[str, ...]:
        """Roles this repeatable acts on; they must exist when it runs."""
        return ()

    def skip_reason(self, run: RunContext) -> str | None:
        """Why the repeatable must not run in *run* (``None``: it may)."""
        if self.context is None or self.context.matches(run.contexts):
            return None
        return self.context.explain(run.contexts)

    def steps(self, run: RunContext) -> list[Step]:
        raise NotImplementedError

    #: on a re-run, send only the steps whose digest changed (see SetPasswords)
    rerun_changed_steps_only = False

    def step_digests(self, steps: Iterable[Step], run: RunContext) -> list[str]:
        """One digest per step: its SQL, and a fingerprint of its secret."""
        digests = []
        for step in steps:
            text = render_offline(step.stmt)
            if step.secret is not None and step.secret_key is not None:
                text += " PASSWORD " + fingerprint(
                    step.secret, salt=run.salt, label=step.secret_key, key=run.fingerprint_key
                )
            digests.append(hashlib.sha256(text.encode()).hexdigest())
        return digests

    @staticmethod
    def checksum(step_digests: Iterable[str]) -> str:
        """The changelog checksum: what the repeatable would send, as a whole."""
        text = f"rolekit-checksum-{CHECKSUM_VERSION}\n" + "\n".join(step_digests)
        return hashlib.sha256(text.encode()).hexdigest()

    def apply(self, session: Session, run: RunContext, steps: list[Step]) -> None:
        for step in steps:
            execute_step(session, step)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"


def execute_step(session: Session, step: Step) -> None:
    if step.secret is None or step.secret_role is None:
        session.execute(step.stmt)
        return
    # The server stores a "SCRAM-SHA-256$..." string as an already-hashed
    # verifier, so the plaintext never travels or lands in a log.
    verifier = encrypt_password(
        step.secret.reveal(), step.secret_role, session.dbapi_connection, "scram-sha-256"
    )
    session.execute_secret(
        step.stmt, (verifier,), describe=f"ALTER ROLE {step.secret_role} PASSWORD <redacted>"
    )


class Sql(Repeatable):
    """Plain SQL (grants, default privileges...); it must be idempotent."""

    def __init__(
        self,
        id: str,
        text: str,
        *,
        targets: Sequence[str] = (),
        context: str | None = None,
        run_always: bool = False,
    ) -> None:
        super().__init__(id, context=context, run_always=run_always)
        self.text = text
        self._targets = tuple(check_role_name(t, what=f"target of {id!r}") for t in targets)

    def targets(self) -> tuple[str, ...]:
        return self._targets

    def sql_text(self, run: RunContext) -> str:
        return self.text

    def steps(self, run: RunContext) -> list[Step]:
        return [Step(sql.SQL(self.sql_text(run)))]


class SqlFile(Sql):
    """SQL read from a file, relative to the repeatables folder."""

    def __init__(
        self,
        id: str,
        path: str,
        *,
        targets: Sequence[str] = (),
        context: str | None = None,
        run_always: bool = False,
    ) -> None:
        super().__init__(id, "", targets=targets, context=context, run_always=run_always)
        self.path = path

    def sql_text(self, run: RunContext) -> str:
        file = Path(self.path)
        if not file.is_absolute():
            file = run.settings.repeatables_dir / file
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RepeatableError(f"repeatable {self.id!r}: cannot read {file}: {exc}") from None


class SetLogin(Repeatable):
    """Turn login on or off for single roles: ``SetLogin("x", {"role": True})``."""

    phase = 1

    def __init__(
        self,
        id: str,
        login: dict[str, bool],
        *,
        context: str | None = None,
        run_always: bool = False,
    ) -> None:
        super().__init__(id, context=context, run_always=run_always)
        self.login = {check_role_name(r): bool(v) for r, v in login.items()}

    def targets(self) -> tuple[str, ...]:
        return tuple(self.login)

    def steps(self, run: RunContext) -> list[Step]:
        for role, enabled in self.login.items():
            if enabled and role not in run.password_roles:
                raise PasswordMissingError(
                    f"repeatable {self.id!r} would enable login for {role!r}, which has no password "
                    f"set by a SetPasswords repeatable in context {run.primary!r}"
                )
        return [Step(ddl.set_login(role, enabled)) for role, enabled in self.login.items()]


class SetPasswords(Repeatable):
    """Set members' passwords from the context's secrets file.

    A role whose key is missing is skipped unless it may log in (per the
    rotation state), in which case the run fails before any change.
    """

    def __init__(
        self, id: str, roles: Sequence[str], *, context: str | None = None, run_always: bool = False
    ) -> None:
        super().__init__(id, context=context, run_always=run_always)
        self.roles = tuple(check_role_name(r, what=f"role of {id!r}") for r in roles)

    def targets(self) -> tuple[str, ...]:
        return self.roles

    # A password that did not change is not set again: a fresh verifier of the
    # same password (new SCRAM salt) would still invalidate what caches the old
    # one, such as PgBouncer's SCRAM pass-through keys for the member in use.
    rerun_changed_steps_only = True

    def roles_with_passwords(self, run: RunContext) -> list[str]:
        return [r for r in self.roles if run.has_secret(r) or run.must_log_in(r)]

    def steps(self, run: RunContext) -> list[Step]:
        steps = []
        for role in self.roles_with_passwords(run):
            secret, key = run.secret(role)
            steps.append(Step(ddl.set_password_verifier(role), role, secret, key))
        return steps


class FamilyLogin(Repeatable):
    """Apply a family's login state from the rotation state file, with guards.

    Runs last (phase 1), so the passwords it relies on are already set and its
    drain check is the last thing before the commit.
    """

    phase = 1

    def __init__(self, id: str, group: str, members: Sequence[str] | None = None) -> None:
        super().__init__(id)
        self.family = RoleFamily.of(group, members)

    def targets(self) -> tuple[str, ...]:
        return self.family.members

    def skip_reason(self, run: RunContext) -> str | None:
        if run.primary is None:
            return "no context given; login state is kept per context"
        if run.rotation.get(self.family.group, run.primary) is None:
            return f"{run.settings.state_file.name} has no state for {self.family.group!r} in context {run.primary!r}"
        return None

    def steps(self, run: RunContext) -> list[Step]:
        assert run.primary is not None
        state = run.rotation.get(self.family.group, run.primary)
        assert state is not None
        unknown = set(state.login) - set(self.family.members)
        if unknown:
            raise RepeatableError(
                f"rotation state of {self.family.group!r} ({run.primary}) names "
                f"{sorted(unknown)}, which are not its members"
            )
        if not state.login and not state.decommissioned:
            raise LockoutError(
                f"rotation state of {self.family.group!r} ({run.primary}) lets no member log in; "
                'set "decommissioned": true to mean it'
            )
        for member in state.login:
            if member not in run.password_roles:
                raise PasswordMissingError(
                    f"refusing to enable login for {member!r}: no SetPasswords repeatable sets its "
                    f"password in context {run.primary!r} (or its key is missing)"
                )
        steps = [Step(ddl.set_login(m, True)) for m in state.login]
        steps += [Step(ddl.clear_valid_until(m)) for m in state.login]
        retired = [m for m in self.family.members if m not in state.login]
        steps += [Step(ddl.set_login(m, False)) for m in retired]
        if state.retire == "expire":
            steps += [Step(ddl.expire_password(m)) for m in retired]
        return steps

    def apply(self, session: Session, run: RunContext, steps: list[Step]) -> None:
        super().apply(session, run, steps)
        state = run.rotation.get(self.family.group, run.primary or "")
        assert state is not None
        retired = [m for m in self.family.members if m not in state.login]
        if retired:
            drain(
                session,
                retired,
                timeout=run.drain_timeout,
                terminate=run.terminate,
                progress=run.progress,
            )
