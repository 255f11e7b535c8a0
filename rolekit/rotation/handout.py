"""What applications are handed: the credentials of a family now, and where to connect.

``rolekit creds`` (:func:`creds`, also ``rolekit.command.creds``) reads them from the state
and secrets files; :mod:`rolekit.rotation.creds_formats` renders them.  Only the
``pgbouncer`` format asks the server, for its stored SCRAM verifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.engine import make_url

from rolekit.errors import GuardError, PrivilegeError, RolekitError
from rolekit.model.family import RoleFamily
from rolekit.pg import catalog
from rolekit.pg.control import ControlConnection
from rolekit.pg.logins import login_problem
from rolekit.project.config import ConfigLike, Settings, load_settings
from rolekit.project.credentials import Credentials
from rolekit.project.state import RotationState
from rolekit.rotation import creds_formats
from rolekit.rotation.creds_formats import Target
from rolekit.secrets import Secret, SecretsFile


@dataclass(frozen=True)
class Creds:
    """The credentials applications should use now: the members that may log
    in, the preferred one first, and where the database is."""

    family: str
    context: str
    credentials: Credentials = field(repr=False)
    target: Target = field(default_factory=Target)

    @property
    def user(self) -> str:
        return self.credentials.preferred[0]

    @property
    def password(self) -> Secret:
        return self.credentials.preferred[1]

    def render(self, fmt: str) -> str:
        """The credentials in one of :data:`rolekit.rotation.creds_formats.FORMATS`."""
        return creds_formats.render(fmt, self.credentials, self.family, self.context, self.target)

    def renderings(self, fmt: str) -> frozenset[str] | None:
        """Every way :meth:`render` writes a secret in *fmt* (see
        :func:`rolekit.rotation.creds_formats.secret_renderings`)."""
        return creds_formats.secret_renderings(
            fmt, self.credentials, self.family, self.context, self.target
        )


def creds(
    config: ConfigLike,
    family: str,
    context: str,
    *,
    host: str | None = None,
    port: int | None = None,
    dbname: str | None = None,
    verifiers: bool = False,
) -> Creds:
    """The credentials applications should use now (from the state and secrets files).

    During a rotation's overlap both members may log in: the incoming one is
    preferred and the other comes second, so a consumer can fall back.
    *host*, *port* and *dbname* override where the project's database URL
    says the database is (for ``pgpass`` and ``url``).  With *verifiers*
    (``pgbouncer``) it also reads the members' SCRAM verifiers from the
    server: see :func:`_server_verifiers`.
    """
    settings = load_settings(config)
    state = RotationState.load(settings.state_file).get(family, context)
    if state is None or state.preferred is None:
        raise RolekitError(f"no member of {family!r} may log in in context {context!r}")
    secrets = SecretsFile(settings.secrets_file(context), repo_root=settings.root)
    preferred = state.preferred
    alternate = next((m for m in state.login if m != preferred), None)
    found = Credentials(
        (preferred, secrets.get(preferred, context)),
        (alternate, secrets.get(alternate, context)) if alternate is not None else None,
    )
    target = _target(settings, host, port, dbname)
    if verifiers:
        target = replace(target, verifiers=_server_verifiers(settings, found))
    return Creds(family, context.lower(), found, target)


def _target(
    settings: Settings, host: str | None = None, port: int | None = None, dbname: str | None = None
) -> Target:
    """Where applications connect: *host*, *port*, *dbname*, else the project's URL."""
    url = make_url(settings.require_url()) if settings.database_url else None
    return Target(
        host or (url.host if url else None),
        port or (url.port if url else None),
        dbname or (url.database if url else None),
    )


def require_renderable(
    settings: Settings, control: ControlConnection, fmt: str, family: RoleFamily, context: str
) -> None:
    """Refuse, before anything changes, a *fmt* that :func:`creds` could not render
    for *family* once the rotation has begun: ``pgbouncer`` without a superuser,
    ``url`` without a host.  The renderer itself decides, on placeholder passwords.

    :raises PrivilegeError: ``pgbouncer``, and the migration user is no superuser.
    :raises RolekitError: what the renderer refuses.
    """
    members = family.members
    stand_ins = None
    if fmt == "pgbouncer":
        _require_verifier_reader(control, members, "Nothing was changed")
        stand_ins = {member: "" for member in members}
    placeholder = Secret("placeholder")
    stand_in = Credentials((members[0], placeholder), (members[1], placeholder))
    target = replace(_target(settings), verifiers=stand_ins)
    creds_formats.render(fmt, stand_in, family.group, context, target)


def _require_verifier_reader(
    control: ControlConnection, members: Sequence[str], nothing_done: str
) -> None:
    if not catalog.privileges(control, members).superuser:
        raise PrivilegeError(
            "--format pgbouncer prints the SCRAM verifiers the server stores (PgBouncer "
            "can log in to the server with them only if they are the server's own); "
            "reading them needs a superuser (pg_authid), and the migration user is not "
            f"one. {nothing_done}"
        )


def _server_verifiers(settings: Settings, found: Credentials) -> dict[str, str]:
    """The SCRAM verifiers the server stores for the members in *found*.

    PgBouncer logs in to the server with a client's SCRAM keys only when its
    auth_file verifier is the server's own (same salt and iterations), so a
    verifier computed here would authenticate clients and then fail every
    server login.  Each member must also accept its password on file: a
    userlist for a password the server does not have yet would lock the
    applications out of PgBouncer.

    :raises PrivilegeError: the migration user cannot read ``pg_authid``.
    :raises GuardError: a member has no SCRAM verifier, or rejects its password.
    """
    members = [user for user, _secret in found.pairs()]
    with ControlConnection.open(settings.require_url(), application_name="rolekit") as control:
        _require_verifier_reader(control, members, "Nothing was printed")
        stored = catalog.password_verifiers(control, members)
        for user, secret in found.pairs():
            if not (stored.get(user) or "").startswith("SCRAM-SHA-256$"):
                raise GuardError(
                    f"{user!r} has no SCRAM-SHA-256 password on the server "
                    "(password_encryption, or not set yet): run alembic upgrade. Nothing was "
                    "printed"
                )
            if problem := login_problem(control, user, secret, "the secrets file"):
                hint = ""
                if "rejects the password" in problem:
                    hint = ": the server does not have it yet (run alembic upgrade)"
                raise GuardError(f"{problem}{hint}. Nothing was printed")
    return {user: stored[user] or "" for user in members}
