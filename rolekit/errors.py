"""Exceptions rolekit raises, and the exit codes of the command line.

Every error a user can provoke derives from :class:`RolekitError`, so the CLI
and the Alembic integration can show its message without a traceback and map
it to an exit code.  Messages name what is wrong (role, key, file, context)
and never carry a secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """What the ``rolekit`` command's exit status means."""

    OK = 0
    #: ``status``/``check`` found drift or a risk, or a check after a commit failed
    PROBLEM = 1
    #: bad input or configuration; nothing changed
    BAD_INPUT = 2
    #: a guard refused; nothing changed
    GUARD = 3
    #: the rotation phase does not allow the step, or another run holds the lock
    PHASE = 4
    #: the database could not be reached
    UNREACHABLE = 5


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type when it has none.

    Server errors can quote the failing statement on later lines, which must
    not carry a verifier into rolekit's output.
    """
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


#: the password of a URL (``scheme://user:password@host``)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def mask_url_passwords(text: str) -> str:
    """*text* with the password of every URL in it replaced by ``***``.

    For text rolekit shows but did not write: a diff of alembic.ini, what
    git or a publish command printed.
    """
    return _URL_PASSWORD.sub(r"\1***@", text)


class RolekitError(Exception):
    """Base class of every error a user can provoke.

    On its way through Alembic it becomes a ``CommandError``
    (:class:`rolekit.runtime.environment.MigrationFailed`), so ``alembic
    upgrade`` prints ``FAILED: <message>`` instead of a traceback; this module
    imports nothing, so applications using :mod:`rolekit.client` need no
    Alembic.
    """

    #: exit code used by the ``rolekit`` command line for this kind of error
    exit_code: int = ExitCode.BAD_INPUT


class UnreachableError(RolekitError):
    """The database could not be reached."""

    exit_code = ExitCode.UNREACHABLE


class RoleNameError(RolekitError):
    """A role name that PostgreSQL would truncate or that we refuse."""


class FamilyConflictError(RolekitError):
    """Existing roles conflict with the declared role family."""


class ContextExpressionError(RolekitError):
    """A context name or expression that cannot be parsed, or an unknown context."""


class SecretsError(RolekitError):
    """A secrets file that cannot be used: missing key, bad line, wrong key..."""


class ChangelogError(RolekitError):
    """The changelog tables are missing, foreign or from an unknown version."""


class RepeatableError(RolekitError):
    """A repeatable that is declared wrongly (duplicate id, unknown role...)."""


class GuardError(RolekitError):
    """A rotation guard refused a change; nothing was changed."""

    exit_code = ExitCode.GUARD


class LockoutError(GuardError):
    """The change would leave a family with no member that can log in."""


class DrainTimeoutError(GuardError):
    """A member still had sessions when the drain timeout ran out."""


class PasswordMissingError(GuardError):
    """Login would be enabled for a member with no password in this context."""


class LiveSessionsError(GuardError):
    """A role that still has sessions would be dropped or disabled."""


class PrivilegeError(GuardError):
    """The migration user cannot see or do what a guard needs; nothing was changed."""


class ClaimError(GuardError):
    """A role is managed from another database of the cluster."""


class StaleFileError(GuardError):
    """The state or secrets file is behind what the database applied (or another
    project's): applying it would move the database backwards."""


class PasswordInUseError(GuardError):
    """An upgrade would replace the password of a member that may log in and is in use."""


class TrackingError(GuardError):
    """Login tracking's schema, tables or function are not the ones rolekit made
    (or an older, unsafe install); nothing was changed."""


class LogExposureError(GuardError):
    """A password verifier would reach the server log and rolekit cannot prevent it."""


class DatabaseError(RolekitError):
    """The server failed a statement, restarted or dropped the connection mid-run;
    the migration transaction did not commit, so nothing changed."""

    exit_code = ExitCode.PROBLEM


class VerificationError(RolekitError):
    """A check after the commit failed: the change is in, but something is wrong."""

    exit_code = ExitCode.PROBLEM


class ReplicaLagError(VerificationError):
    """The change committed, but a standby had not replayed it in time."""


class BothMembersFailedError(RolekitError):
    """Every member the credential source knows was rejected, even after a refresh.

    The message names each user and why it was rejected (``password
    rejected``, ``not permitted to log in``...) -- never a password -- and
    where the credentials came from, since a stale source is the usual
    cause.  It is raised ``from None``: the drivers' messages add nothing the
    reasons do not say.

    :ivar users: the users that were tried, in order.
    :ivar failures: ``(user, reason)`` for each attempt.
    """

    def __init__(self, failures: Sequence[tuple[str, str]], source: str) -> None:
        self.failures = tuple(failures)
        self.source = source
        self.users = tuple(dict.fromkeys(user for user, _ in self.failures))
        tried = ", ".join(f"{user!r} ({reason})" for user, reason in self.failures)
        if len(self.users) > 1:
            what = f"could not log in as any member of the family: {tried}"
        else:
            what = f"could not log in: {tried}, and no other member is known to fall back to"
        super().__init__(
            f"{what}; checking {source} again gave nothing better: make sure it is up to "
            "date with the rotation (passwords are not shown)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are pickled as ``cls(*args)``; ours takes other arguments
        # (task queues and multiprocessing pickle exceptions).
        return (type(self), (self.failures, self.source))


class RotationStateError(RolekitError):
    """The rotation state does not allow the requested phase, or is invalid."""

    exit_code = ExitCode.PHASE


class StateFileError(RolekitError):
    """``rotation.json`` is not valid: wrong types, duplicate keys, a dead-end state..."""


class BusyError(RotationStateError):
    """Another rolekit run holds the lock this one needs; nothing was changed."""


__all__ = [
    "BothMembersFailedError",
    "BusyError",
    "ChangelogError",
    "ClaimError",
    "ContextExpressionError",
    "DatabaseError",
    "DrainTimeoutError",
    "ExitCode",
    "FamilyConflictError",
    "GuardError",
    "LiveSessionsError",
    "LockoutError",
    "LogExposureError",
    "PasswordInUseError",
    "PasswordMissingError",
    "PrivilegeError",
    "RepeatableError",
    "ReplicaLagError",
    "RoleNameError",
    "RolekitError",
    "RotationStateError",
    "SecretsError",
    "StaleFileError",
    "StateFileError",
    "TrackingError",
    "UnreachableError",
    "VerificationError",
    "first_line",
    "mask_url_passwords",
]
