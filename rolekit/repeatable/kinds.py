"""The kinds of repeatable a project can declare.

``Sql``/``SqlFile`` run on change; ``SetPasswords`` sets passwords from the
secrets file on change (and re-sends one the server rejects); ``SetLogin``
and ``FamilyLogin`` converge login state to what is declared, comparing with
the catalog on every upgrade, with the lockout, password, membership and
drain guards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg2 import sql

from rolekit.errors import (
    GuardError,
    LockoutError,
    PasswordMissingError,
    RepeatableError,
    StateFileError,
)
from rolekit.model.family import RoleFamily
from rolekit.model.names import check_role_name
from rolekit.pg import ddl, tracking
from rolekit.pg.family_catalog import FamilyCatalog
from rolekit.project.state import FamilyState
from rolekit.repeatable.base import Repeatable, Step

if TYPE_CHECKING:
    from rolekit.pg.catalog import RoleInfo
    from rolekit.pg.session import Session
    from rolekit.repeatable.run import Observed, RunContext


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

    def steps(self, run: RunContext, observed: Observed) -> list[Step]:
        return [Step(sql.SQL(self.sql_text(run)))]


class SqlFile(Sql):
    """SQL read from a file, relative to the repeatables folder.

    Takes the options of :class:`Sql` (``targets``, ``context``, ``run_always``).
    """

    def __init__(self, id: str, path: str, **options: Any) -> None:
        super().__init__(id, "", **options)
        self.path = path

    def sql_text(self, run: RunContext) -> str:
        file = Path(self.path)
        if not file.is_absolute():
            file = run.settings.repeatables_dir / file
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RepeatableError(f"repeatable {self.id!r}: cannot read {file}: {exc}") from None


def _password_step(run: RunContext, role: str) -> Step:
    secret, key = run.secret(role)
    return Step(ddl.set_password_verifier(role), role, secret, key)


def _enable_steps(run: RunContext, observed: Observed, role: str) -> list[Step]:
    """Steps that let *role* log in: its known password first, unless this run sends it.

    A NOLOGIN role's password may have been changed by anyone since rolekit
    set it (another database's project, an administrator); enabling it with
    an unknown password would hand applications credentials the server
    refuses.  Re-sending the verifier of a role nobody logs in as is harmless.
    """
    steps = [] if role in observed.passwords_sent else [_password_step(run, role)]
    return [*steps, Step(ddl.set_login(role, True))]


def _disabled_in(role: str, steps: Sequence[Step]) -> bool:
    return Step(ddl.set_login(role, False)) in steps


class SetLogin(Repeatable):
    """Turn login on or off for single roles: ``SetLogin("x", {"role": True})``."""

    generated_statements = True

    phase = 1
    converges = True

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

    def managed_roles(self) -> tuple[str, ...]:
        return tuple(self.login)

    def steps(self, run: RunContext, observed: Observed) -> list[Step]:
        for role, enabled in self.login.items():
            if enabled and role not in observed.password_roles:
                raise PasswordMissingError(
                    f"repeatable {self.id!r} would enable login for {role!r}, which has no password "
                    f"set by a SetPasswords repeatable in context {run.primary!r}"
                )
        return [Step(ddl.set_login(role, enabled)) for role, enabled in self.login.items()]

    def converge(
        self, run: RunContext, observed: Observed, steps: list[Step]
    ) -> tuple[list[Step], list[str]]:
        send: list[Step] = []
        why: list[str] = []
        for role, enabled in self.login.items():
            info = observed.roles.get(role)
            if info is None or info.can_login == enabled:
                continue
            why.append(f"{role!r} is {'NOLOGIN' if enabled else 'LOGIN'} in the catalog")
            send += (
                _enable_steps(run, observed, role)
                if enabled
                else [Step(ddl.set_login(role, False))]
            )
        return send, why

    def disables(self, run: RunContext, roles: Mapping[str, RoleInfo]) -> list[str]:
        return [r for r, on in self.login.items() if not on and r in roles and roles[r].can_login]

    def apply(self, session: Session, run: RunContext, steps: list[Step]) -> None:
        super().apply(session, run, steps)
        if session.offline:
            return
        disabled = [
            r for r in self.login if _disabled_in(r, steps) and r not in run.terminate_after_commit
        ]
        if disabled:
            run.decisive_check(session, disabled)


class SetPasswords(Repeatable):
    """Set members' passwords from the context's secrets file.

    A role whose key is missing is skipped unless it may log in (per the
    rotation state), in which case the run fails before any change.  A
    password the server rejects (found by a login before the migration) is
    sent again, whatever the changelog says.
    """

    generated_statements = True

    # A password that did not change is not set again: a fresh verifier of the
    # same password (new SCRAM salt) would still invalidate what caches the old
    # one, such as PgBouncer's SCRAM pass-through keys for the member in use.
    rerun_changed_steps_only = True

    def __init__(
        self, id: str, roles: Sequence[str], *, context: str | None = None, run_always: bool = False
    ) -> None:
        super().__init__(id, context=context, run_always=run_always)
        self.roles = tuple(check_role_name(r, what=f"role of {id!r}") for r in roles)

    def targets(self) -> tuple[str, ...]:
        return self.roles

    def managed_roles(self) -> tuple[str, ...]:
        return self.roles

    def roles_with_passwords(self, run: RunContext) -> list[str]:
        return [r for r in self.roles if run.has_secret(r) or run.must_log_in(r)]

    def steps(self, run: RunContext, observed: Observed) -> list[Step]:
        return [_password_step(run, role) for role in self.roles_with_passwords(run)]

    def converge(
        self, run: RunContext, observed: Observed, steps: list[Step]
    ) -> tuple[list[Step], list[str]]:
        drifted = [s for s in steps if s.secret_role in run.password_drift]
        why = [
            f"{s.secret_role!r} rejects the password in {run.secrets_file.path.name} (password drift)"
            for s in drifted
        ]
        return drifted, why


class FamilyLogin(Repeatable):
    """Apply a family's login state from the rotation state file, with guards.

    Runs last (phase 1), so the passwords it relies on are already set and
    its decisive drain check is the last thing before the commit.  It
    compares the catalog with the declared state on every upgrade and
    repairs what drifted: a member disabled by hand, a membership revoked.

    :param context: limit it to some contexts; in every context where it
        applies, the rotation state must have an entry for the family.
    """

    generated_statements = True

    phase = 1
    converges = True

    def __init__(self, id: str, group: str, members: Sequence[str] | None = None, **options: Any):
        super().__init__(id, **options)  # context=...
        self.family = RoleFamily.of(group, members)

    def targets(self) -> tuple[str, ...]:
        return self.family.members

    def managed_roles(self) -> tuple[str, ...]:
        return self.family.roles

    def skip_reason(self, run: RunContext) -> str | None:
        reason = super().skip_reason(run)
        if reason is None and run.primary is None:
            return "no context given; login state is kept per context"
        return reason

    def state(self, run: RunContext) -> FamilyState:
        """The declared state, checked: it names members, and someone may log in."""
        assert run.primary is not None
        group = self.family.group
        state = run.rotation.get(group, run.primary)
        if state is None:
            raise StateFileError(
                f"{run.settings.state_file.name} has no state for family {group!r} in context "
                f"{run.primary!r}, so rolekit cannot tell which member may log in; nothing was "
                f'changed. Add "{run.primary}": {{"login": ["{self.family.members[0]}"]}} under '
                f'"families"."{group}", or give the FamilyLogin repeatable a context= that '
                "excludes it"
            )
        recorded = run.rotation.members.get(group)
        if recorded is not None and set(recorded) != set(self.family.members):
            raise RepeatableError(
                f"{run.settings.state_file.name} records members {', '.join(recorded)} for "
                f"{group!r}, but the FamilyLogin repeatable declares "
                f"{', '.join(self.family.members)}"
            )
        unknown = set(state.login) - set(self.family.members)
        if unknown:
            raise RepeatableError(
                f"rotation state of {group!r} ({run.primary}) names {sorted(unknown)}, which are "
                f"not its members ({', '.join(self.family.members)})"
            )
        if not state.login and not state.decommissioned:
            raise LockoutError(
                f"rotation state of {group!r} ({run.primary}) lets no member log in; "
                'set "decommissioned": true to mean it'
            )
        return state

    def retired(self, state: FamilyState) -> list[str]:
        return [m for m in self.family.members if m not in state.login]

    def disables(self, run: RunContext, roles: Mapping[str, RoleInfo]) -> list[str]:
        retired = self.retired(self.state(run))
        return [m for m in retired if m in roles and roles[m].can_login]

    def steps(self, run: RunContext, observed: Observed) -> list[Step]:
        state = self.state(run)
        for member in state.login:
            if member not in observed.password_roles:
                raise PasswordMissingError(
                    f"refusing to enable login for {member!r}: no SetPasswords repeatable sets its "
                    f"password in context {run.primary!r} (or its key is missing)"
                )
        steps = [Step(ddl.set_login(m, True)) for m in state.login]
        steps += [Step(ddl.clear_valid_until(m)) for m in state.login]
        retired = self.retired(state)
        steps += [Step(ddl.set_login(m, False)) for m in retired]
        if state.retire == "expire":
            steps += [Step(ddl.expire_password(m)) for m in retired]
        return steps

    def catalog(self, observed: Observed) -> FamilyCatalog:
        return FamilyCatalog.of(self.family, observed.roles, observed.server_version)

    def converge(
        self, run: RunContext, observed: Observed, steps: list[Step]
    ) -> tuple[list[Step], list[str]]:
        state = self.state(run)
        found = self.catalog(observed)
        send: list[Step] = []
        why: list[str] = []
        for member in state.login:
            drift = found.acts_as_group(member)
            if drift is None:
                continue
            if not drift.repair:
                raise GuardError(
                    f"refusing to let {member!r} log in: {drift.problem}; nothing was changed"
                )
            send += [Step(stmt) for stmt in drift.repair]
            why.append(drift.problem)
        for drift in found.login_drift(state):
            info = observed.roles[drift.role]
            if drift.role in state.login and not info.can_login:
                send += _enable_steps(run, observed, drift.role)[:-1]  # the password, if needed
            send += [Step(stmt) for stmt in drift.repair]
            why.append(drift.problem)
        return send, why

    def apply(self, session: Session, run: RunContext, steps: list[Step]) -> None:
        if session.offline:  # a script: the server checks nothing until it runs it
            super().apply(session, run, steps)
            return
        state = self.state(run)
        # Verified after the repairs and before the commit, which is when the
        # LOGIN takes effect: a member that would not act as the group never
        # becomes the one the applications use.
        if any(step.secret is not None for step in steps):
            super().apply(session, run, steps)
            found = FamilyCatalog.read(session, self.family)
        else:  # the statements and the read in one round trip
            found = FamilyCatalog.read_after(session, self.family, [s.stmt for s in steps])
        for member in state.login:
            drift = found.acts_as_group(member)
            if drift is not None:
                raise GuardError(
                    f"refusing to let {member!r} log in: {drift.problem}; nothing was changed"
                )
        disabled = [
            m
            for m in self.retired(state)
            if _disabled_in(m, steps) and m not in run.terminate_after_commit
        ]
        if disabled:
            run.decisive_check(session, disabled)
        leaving = [m for m in state.login if m != state.preferred]
        for stmt in tracking.leaving_statements(session, self.family.members, leaving):
            session.execute(stmt)
