"""The base class of repeatables and the statements they produce.

A repeatable turns the declared state into :class:`Step` s.  The engine
checksums those steps (secrets replaced by keyed fingerprints), so a
repeatable re-runs exactly when what it would do changes: a new password in
the secrets file changes its checksum, reformatting its source does not.
A repeatable that *converges* (the login kinds) also runs whenever the
catalog differs from what it declares, whatever its checksum says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from psycopg2 import sql

from rolekit.errors import RepeatableError
from rolekit.model.contexts import ContextExpression
from rolekit.pg.session import render_offline
from rolekit.secrets import Secret, fingerprint

if TYPE_CHECKING:
    from rolekit.pg.catalog import RoleInfo
    from rolekit.pg.session import Session
    from rolekit.repeatable.run import Observed, RunContext

#: bump when the rendering of steps changes, so checksums stay comparable
CHECKSUM_VERSION = "1"


class Step(NamedTuple):
    """One statement; *secret* is a password to send as a SCRAM verifier."""

    stmt: sql.Composable
    secret_role: str | None = None
    secret: Secret | None = None
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
    #: on a re-run, send only the steps whose digest changed (see SetPasswords)
    rerun_changed_steps_only = False
    #: when it runs, send only what :meth:`converge` finds different in the catalog
    converges = False
    #: its statements are rolekit's own (composed, never user SQL): consecutive
    #: ones without a secret are sent in one round trip
    generated_statements = False

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

    def managed_roles(self) -> tuple[str, ...]:
        """Roles whose password or login it manages: one database of a cluster claims them."""
        return ()

    def disables(self, run: RunContext, roles: Mapping[str, RoleInfo]) -> list[str]:
        """Roles that may log in now (per *roles*) and that this repeatable disables.

        The environment drains them before the migration transaction starts.
        """
        return []

    def skip_reason(self, run: RunContext) -> str | None:
        """Why the repeatable must not run in *run* (``None``: it may)."""
        if run.scope is not None and run.scope.isdisjoint(self.targets()):
            # Another checkout may have moved that family since this one's files
            # were written: its state and passwords here can be behind.
            return "not a role of the families this rotation moves; the next upgrade runs it"
        if self.context is None or self.context.matches(run.contexts):
            return None
        return self.context.explain(run.contexts)

    def steps(self, run: RunContext, observed: Observed) -> list[Step]:
        """Everything it declares, in order: what the checksum covers."""
        raise NotImplementedError

    def converge(
        self, run: RunContext, observed: Observed, steps: list[Step]
    ) -> tuple[list[Step], list[str]]:
        """What the catalog lacks of *steps*, and why: ``(steps to send, drift found)``.

        The default knows nothing of the catalog: nothing drifts.
        """
        return [], []

    def step_digests(
        self, steps: Iterable[Step], run: RunContext, *, keyed: bool = True
    ) -> list[str]:
        """One digest per step: its SQL, and a fingerprint of its secret.

        :param keyed: fingerprint with the secrets file's key (when it has
            one); ``False`` gives the scrypt fingerprint of a file without one,
            to recognise a password whose file only gained a key.
        """
        digests = []
        for step in steps:
            text = render_offline(step.stmt)
            if step.secret is not None and step.secret_key is not None:
                key = run.fingerprint_key if keyed else None
                text += " PASSWORD " + fingerprint(
                    step.secret, salt=run.salt, label=step.secret_key, key=key
                )
            digests.append(hashlib.sha256(text.encode()).hexdigest())
        return digests

    @staticmethod
    def checksum(step_digests: Iterable[str]) -> str:
        """The changelog checksum: what the repeatable would send, as a whole."""
        text = f"rolekit-checksum-{CHECKSUM_VERSION}\n" + "\n".join(step_digests)
        return hashlib.sha256(text.encode()).hexdigest()

    def apply(self, session: Session, run: RunContext, steps: list[Step]) -> None:
        if not self.generated_statements:  # user SQL: one statement per round trip
            for step in steps:
                execute_step(session, step)
            return
        plain: list[sql.Composable] = []  # consecutive statements without a secret
        for step in steps:
            if step.secret is None:
                plain.append(step.stmt)
                continue
            session.execute_many(plain)  # one round trip
            plain = []
            execute_step(session, step)
        session.execute_many(plain)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"


def execute_step(session: Session, step: Step) -> None:
    if step.secret is None or step.secret_role is None:
        session.execute(step.stmt)
        return
    # The server stores a "SCRAM-SHA-256$..." string as an already-hashed
    # verifier, so the plaintext never travels or lands in a log.
    verifier = session.verifier(step.secret_role, step.secret)
    session.execute_secret(
        step.stmt, (verifier,), describe=f"ALTER ROLE {step.secret_role} PASSWORD <redacted>"
    )
