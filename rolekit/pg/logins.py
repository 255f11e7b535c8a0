"""Logging in as the members: the server's own word on their passwords.

Only a superuser can read ``pg_authid``, so rolekit asks the server the one
way every migration user can: it logs in.  Before the migration transaction,
a member that may log in and rejects the secrets file's password has
drifted (someone changed it), and the run sends it again.  After the
commit, every member whose password or login changed must log in and run as
its group, or the run fails.  Logins run a few at a time.

A migration user that may read ``pg_authid`` skips the first kind of login
where the server proves the password without one: it still stores the
verifier rolekit set from the password on file
(:func:`rolekit.pg.password_history.proven`).  A login costs a backend
start and a SCRAM exchange (a few milliseconds of CPU on each side); with
hundreds of families it was most of a no-op upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg2
from psycopg2 import sql

from rolekit.errors import RolekitError, VerificationError, first_line
from rolekit.pg import password_history, tracking
from rolekit.pg.control import ControlConnection
from rolekit.secrets import Secret

log = logging.getLogger(__name__)

#: where the control connection went, so member logins go to the same server
_KEPT = ("host", "hostaddr", "port", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey")
APPLICATION_NAME = tracking.OWN_LOGINS
#: logins in flight at once (each is a backend start and a SCRAM exchange)
PARALLEL_LOGINS = 4


_Item = TypeVar("_Item")
_Outcome = TypeVar("_Outcome")


def _in_parallel(fn: Callable[[_Item], _Outcome], items: Sequence[_Item]) -> list[_Outcome]:
    """``fn`` over *items*, a few at a time (psycopg2 releases the GIL while it
    connects), results in the order of *items*."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor  # not needed by a one-member project

    with ThreadPoolExecutor(min(PARALLEL_LOGINS, len(items)), "rolekit-login") as pool:
        return list(pool.map(fn, items))


def connect_params(control: ControlConnection) -> dict[str, str]:
    """Where the control connection went, so member logins go to the same server."""
    params = control.dbapi_connection.get_dsn_parameters()
    return {k: v for k, v in params.items() if k in _KEPT and v}


class LoginCheck(NamedTuple):
    """A login to try once the transaction committed."""

    role: str
    secret: Secret
    #: ``current_user`` the session must run as (the family's group)
    acts_as: str


def _connect(where: ControlConnection | dict[str, str], role: str, password: str) -> Any:
    kept = connect_params(where) if isinstance(where, ControlConnection) else where
    return psycopg2.connect(
        **kept,
        user=role,
        password=password,
        connect_timeout=10,
        application_name=APPLICATION_NAME,
    )


def _password_rejected(exc: psycopg2.Error) -> bool:
    # libpq reports no SQLSTATE for a failed connection; the server's message
    # is the only sign (servers with translated lc_messages need 'C').
    return "password authentication failed" in str(exc)


class PasswordDrift:
    """Members that may log in and reject the secrets file's password, found by logging in.

    The logins run in a thread while the migration starts (a login is a
    connection and a SCRAM exchange; a few run at a time); calling the object
    waits for them.

    :raises RolekitError: on call, when a login failed for another reason (no
        pg_hba.conf entry for this host...): rolekit cannot tell, and says how
        to skip the check.
    """

    def __init__(
        self,
        params: dict[str, str],
        secrets: Sequence[tuple[str, Secret]],
        source: str,
        proven: frozenset[str] = frozenset(),
    ) -> None:
        self._params, self._secrets, self._source = params, secrets, source
        self._proven = proven
        self._found: frozenset[str] = frozenset()
        #: members that accepted the password on file, or that the server
        #: proved to have it (*proven*): the server has it
        self.verified: frozenset[str] = proven
        self._error: RolekitError | None = None
        self._thread = threading.Thread(target=self._run, name="rolekit-logins", daemon=True)
        if secrets:
            self._thread.start()

    def _judge(self, item: tuple[str, Secret]) -> bool | RolekitError:
        """True: the member has the password on file; False: it rejects it."""
        role, secret = item
        try:
            conn = _connect(self._params, role, secret.reveal())
        except psycopg2.OperationalError as exc:
            if _password_rejected(exc):
                return False
            return RolekitError(
                f"cannot log in as {role!r} to check its password: {first_line(exc)}. "
                "Nothing was changed. Allow it in pg_hba.conf for this host, or set "
                "verify_logins = false in [rolekit] to skip login checks"
            )
        conn.close()
        return True

    def _run(self) -> None:
        drifted, verified = set(), set()
        for (role, _), outcome in zip(
            self._secrets, _in_parallel(self._judge, self._secrets), strict=True
        ):
            if isinstance(outcome, RolekitError):
                self._error = outcome
                return
            if outcome:
                verified.add(role)
                continue
            log.warning(
                "%s rejects the password in %s: it drifted (changed outside rolekit); "
                "sending it again",
                role,
                self._source,
            )
            drifted.add(role)
        self._found, self.verified = frozenset(drifted), frozenset(verified) | self._proven

    def __call__(self) -> frozenset[str]:
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._found


def password_drift(
    control: ControlConnection, secrets: Sequence[tuple[str, Secret]], source: str, context: str
) -> PasswordDrift:
    """Start checking the passwords on file (*source*, of *context*) of members
    that may log in: those the server does not prove to have them log in (see
    :class:`PasswordDrift`)."""
    proven = password_history.proven(control, secrets, context)
    if proven:
        names = sorted(proven)
        log.info(
            "%d member(s) need no login check: the server still stores the verifier rolekit "
            "set from the password in %s (%s)",
            len(names),
            source,
            ", ".join(names) if len(names) <= 8 else ", ".join(names[:8]) + ", ...",
        )
    rest = [(role, secret) for role, secret in secrets if role not in proven]
    return PasswordDrift(connect_params(control), rest, source, proven)


def verify_logins(control: ControlConnection, checks: Sequence[LoginCheck]) -> None:
    """Log in as each member whose password or login changed; each must run as its group.

    Like the test step of AWS's rotation: a password that does not work, or
    a member whose sessions would not act as the group, is reported now,
    not by the first application that tries it.  The logins run a few at a
    time; the first failure in the order of *checks* is the one reported.

    :raises VerificationError: the change is committed but a login failed.
    """
    params = connect_params(control)

    def login(check: LoginCheck) -> str | VerificationError:
        try:
            conn = _connect(params, check.role, check.secret.reveal())
        except psycopg2.OperationalError as exc:
            return VerificationError(
                f"login check failed for {check.role!r} after the commit: {first_line(exc)}. "
                "The change is committed; fix the secret or the pg_hba.conf entry and re-run"
            )
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT current_user"))
            row = cur.fetchone()
        return str(row[0]) if row else ""

    for check, outcome in zip(checks, _in_parallel(login, checks), strict=True):
        if isinstance(outcome, VerificationError):
            raise outcome
        acting = outcome or None
        if acting != check.acts_as:
            raise VerificationError(
                f"login check for {check.role!r}: its session runs as {acting!r}, not "
                f"{check.acts_as!r}, so objects it creates and privileges it uses are not the "
                "group's. The change is committed; check the membership (SET option on 16+) "
                "and 'ALTER ROLE ... SET role', then re-run"
            )
        log.info("verified login as %s (session runs as %s)", check.role, acting)


def login_works(control: ControlConnection, role: str, password: str) -> bool:
    """Whether *role* can log in with *password* right now."""
    try:
        conn = _connect(control, role, password)
    except psycopg2.OperationalError:
        return False
    conn.close()
    return True


def login_problem(
    control: ControlConnection, role: str, secret: Secret, filename: str
) -> str | None:
    """Why *role* cannot log in with *secret* (``None``: it can), for ``rolekit check``."""
    try:
        conn = _connect(control, role, secret.reveal())
    except psycopg2.OperationalError as exc:
        if _password_rejected(exc):
            return f"{role!r} rejects the password in {filename}"
        return f"cannot log in as {role!r} to check its password: {first_line(exc)}"
    conn.close()
    return None
