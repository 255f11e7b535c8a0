"""Keeping password verifiers out of the server log, or refusing to send them.

rolekit sends only a SCRAM verifier, never a password, but the verifier is
still a secret worth keeping out of logs.  Before the first statement that
carries one, rolekit reads every setting that would make the server write
that statement somewhere, and for each one that would:

* switches it off for exactly that statement (``SET LOCAL``) when the
  migration user may -- a superuser, any user for ``USERSET`` settings, or a
  user granted ``SET`` on the parameter (PostgreSQL 15+);
* otherwise **refuses** (nothing changed), naming the setting, its value and
  the ``GRANT SET ON PARAMETER`` that would fix it -- unless the user spelled
  out ``allow_verifier_in_log``.

Why refuse rather than warn: a warning scrolls past in a CI log while the
verifier stays in the server log, its archives and its log shippers for
good.  The one exception is ``log_min_error_statement``, which logs the
statement only if it fails: a failure is rare and rolekit makes it rarer
(no timeouts for that statement), and refusing would make rolekit unusable
on managed services with default settings; it is a loud warning instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from psycopg2 import sql

from rolekit.errors import LogExposureError
from rolekit.pg.catalog import PG15, Reader

log = logging.getLogger(__name__)

#: severities at which ``log_min_error_statement`` logs a failed ALTER ROLE
_ERROR_LOGGING_LEVELS = frozenset(
    {"debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "error"}
)

#: setting -> the value that keeps the statement out of the log
QUIET_VALUES = {
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_min_duration_sample": "-1",
    "log_transaction_sample_rate": "0",
    "log_min_error_statement": "panic",
    "debug_print_parse": "off",
    "debug_print_rewritten": "off",
    "debug_print_plan": "off",
    "pg_stat_statements.track_utility": "off",
    "pgaudit.log": "none",
}
#: read to judge log_min_duration_sample, never changed
_ALSO_READ = ("log_statement_sample_rate",)


@dataclass(frozen=True)
class Exposure:
    """A setting under which the server would record a verifier-bearing statement."""

    setting: str
    value: str
    #: the statement is recorded only if it fails
    on_error_only: bool
    #: the migration user may switch it off for one statement
    settable: bool

    def describe(self) -> str:
        return f"{self.setting} = {self.value!r}"


@dataclass(frozen=True)
class LogSafety:
    """What to switch off around a verifier, and what cannot be."""

    exposures: tuple[Exposure, ...]
    user: str
    version: int
    to_set: dict[str, str] = field(default_factory=dict)

    @property
    def unfixable(self) -> list[Exposure]:
        return [e for e in self.exposures if not e.settable]

    def require_safe(self, *, allow_verifier_in_log: bool, what: str) -> None:
        """Refuse *what* when a verifier would be logged and rolekit cannot stop it."""
        blocking = [e for e in self.unfixable if not e.on_error_only]
        on_error = [e for e in self.unfixable if e.on_error_only]
        if blocking:
            settings = ", ".join(e.describe() for e in blocking)
            names = ", ".join(e.setting for e in blocking)
            if not allow_verifier_in_log:
                grant = (
                    f"GRANT SET ON PARAMETER {names} TO {self.user}"
                    if self.version >= PG15
                    else "a superuser migration user (PostgreSQL 14 has no parameter privileges)"
                )
                raise LogExposureError(
                    f"refusing to send {what}: the server would record it ({settings}) and "
                    f"{self.user} may not switch that off for one statement; nothing was "
                    f"changed. Fix: {grant}; or lower the setting for {self.user}; or accept "
                    "that the verifier (never the password) is logged with "
                    "-x allow_verifier_in_log=true ([rolekit] allow_verifier_in_log = true)"
                )
            log.warning(
                "WARNING: sending %s although the server records it (%s): "
                "allow_verifier_in_log is set",
                what,
                settings,
            )
        if on_error:
            log.warning(
                "WARNING: if setting %s fails, the server logs the statement with its verifier "
                "(%s) and %s may not prevent it; GRANT SET ON PARAMETER %s TO %s avoids this",
                what,
                ", ".join(e.describe() for e in on_error),
                self.user,
                ", ".join(e.setting for e in on_error),
                self.user,
            )


def _exposed(name: str, value: str, values: dict[str, str]) -> bool | None:
    """Whether *name* = *value* records the statement: ``None`` no, ``False`` always,
    ``True`` only when it fails."""
    recorded: bool
    if name == "log_statement":
        recorded = value in ("ddl", "mod", "all")
    elif name == "log_min_duration_statement":
        recorded = int(value) >= 0
    elif name == "log_min_duration_sample":
        recorded = int(value) >= 0 and float(values.get("log_statement_sample_rate", "0")) > 0
    elif name == "log_transaction_sample_rate":
        recorded = float(value) > 0
    elif name == "log_min_error_statement":
        return True if value in _ERROR_LOGGING_LEVELS else None
    elif name == "pgaudit.log":
        recorded = value.strip().lower() not in ("", "none")
    else:
        recorded = value == "on"
    return False if recorded else None


def assess(reader: Reader, *, superuser: bool) -> LogSafety:
    """Read the logging settings and the user's right to change them (one round trip)."""
    names = [*QUIET_VALUES, *_ALSO_READ]
    privilege = (
        "has_parameter_privilege(s.name, 'SET')" if reader.server_version >= PG15 else "false"
    )
    rows = reader.fetchall(
        sql.SQL(
            "SELECT s.name, s.setting, s.context = 'user' OR {privilege}, current_user"
            " FROM pg_settings s WHERE s.name = ANY(%s)"
        ).format(privilege=sql.SQL(privilege)),
        (names,),
    )
    values = {name: setting for name, setting, _, _ in rows}
    user = rows[0][3] if rows else "the migration user"
    exposures: list[Exposure] = []
    to_set: dict[str, str] = {}
    # log_transaction_sample_rate is decided when the transaction starts, so
    # switching it off now is too late: rolekit's connect hook does it for the
    # session where it may (runtime.environment), and what is left here is
    # what it could not change.
    late = {"log_transaction_sample_rate"}
    for name, setting, may_set, _ in rows:
        if name not in QUIET_VALUES:
            continue
        on_error_only = _exposed(name, setting, values)
        if on_error_only is None:
            continue
        settable = (superuser or bool(may_set)) and name not in late
        exposures.append(Exposure(name, setting, on_error_only, settable))
        if settable:
            to_set[name] = QUIET_VALUES[name]
    if any(e.on_error_only and not e.settable for e in exposures):
        # A timeout would make the statement fail, and a failure logs it.
        to_set.update(statement_timeout="0", lock_timeout="0")
    return LogSafety(tuple(exposures), user, reader.server_version, to_set)
