"""Exceptions rolekit raises.

Every error a user can provoke derives from :class:`RolekitError`, so the CLI
and the Alembic integration can show its message without a traceback and map
it to an exit code.  Messages name what is wrong (role, key, file, context)
and never carry a secret.
"""

from __future__ import annotations

from alembic.util import CommandError


class RolekitError(CommandError):
    """Base class of every error a user can provoke.

    It is an Alembic ``CommandError``, so ``alembic upgrade`` prints
    ``FAILED: <message>`` instead of a traceback.
    """

    #: exit code used by the ``rolekit`` command line for this kind of error
    exit_code = 2


class RoleNameError(RolekitError):
    """A role name that PostgreSQL would truncate or that we refuse."""


class FamilyConflictError(RolekitError):
    """Existing roles conflict with the declared role family."""


class ContextExpressionError(RolekitError):
    """A context name or expression that cannot be parsed."""


class SecretsError(RolekitError):
    """A secrets file that cannot be used: missing key, bad line, wrong key..."""


class ChangelogError(RolekitError):
    """The changelog tables are missing, foreign or from an unknown version."""


class RepeatableError(RolekitError):
    """A repeatable that is declared wrongly (duplicate id, unknown role...)."""


class GuardError(RolekitError):
    """A rotation guard refused a change; nothing was changed."""

    exit_code = 3


class LockoutError(GuardError):
    """The change would leave a family with no member that can log in."""


class DrainTimeoutError(GuardError):
    """A member still had sessions when the drain timeout ran out."""


class PasswordMissingError(GuardError):
    """Login would be enabled for a member with no password in this context."""


class LiveSessionsError(GuardError):
    """A role that still has sessions would be dropped."""


class RotationStateError(RolekitError):
    """The rotation state does not allow the requested phase."""

    exit_code = 4
