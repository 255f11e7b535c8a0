"""Project settings: the database URL and the ``[rolekit]`` section of alembic.ini.

The CLI and ``migrations/env.py`` both read settings here, so they always
agree on which database, secrets file and state file they mean.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from rolekit.errors import RolekitError, first_line
from rolekit.model import variables
from rolekit.model.durations import parse_duration
from rolekit.secrets import DEFAULT_MIN_LENGTH as DEFAULT_MIN_PASSWORD_LENGTH

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from sqlalchemy.engine import URL

#: seconds ``finish`` waits for the old member to drain, quiet period included
DEFAULT_DRAIN_TIMEOUT = 300.0
#: seconds an upgrade waits for another rolekit run on the same database
DEFAULT_LOCK_WAIT = 300.0
#: seconds a leaving member must go unseen on every host and pooler before it
#: is disabled: longer than the gap between two connections of the common
#: periodic clients -- probes every 10 s, metrics scrapes every 15-60 s, cron
#: jobs every minute, with room for their jitter (see the README)
DEFAULT_DRAIN_QUIET_PERIOD = 90.0
#: seconds to wait after the commit for every replica to replay it
DEFAULT_REPLICA_WAIT = 30.0
#: seconds ``rotate auto``'s ``--publish`` command may run before it is ended
DEFAULT_PUBLISH_TIMEOUT = 300.0
#: the SQLAlchemy driver of rolekit's migrations and connections
MIGRATION_DRIVER = "postgresql+psycopg2"
#: the word in ``replicas`` that turns the check for unknown standbys off
REPLICAS_UNCHECKED = "unchecked"
#: where each kind of URL is set, as a refusal names it (never quoting the URL)
DATABASE_URL_SOURCE = "DATABASE_URL or sqlalchemy.url"
REPLICAS_SOURCE = f"[rolekit] replicas ({variables.REPLICAS.name})"
POOLERS_SOURCE = f"[rolekit] poolers ({variables.POOLERS.name})"


@dataclass(frozen=True)
class Settings:
    """Where a rolekit project keeps things, resolved against alembic.ini's folder."""

    root: Path
    #: the alembic.ini these settings come from
    ini_path: Path
    database_url: str | None
    repeatables_dir: Path
    state_file: Path
    default_secrets_file: Path
    secrets_files: dict[str, Path] = field(default_factory=dict)
    min_password_length: dict[str, int] = field(default_factory=dict)
    default_min_password_length: int = DEFAULT_MIN_PASSWORD_LENGTH
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    lock_wait: float = DEFAULT_LOCK_WAIT
    #: log in as each member that may log in, before and after an upgrade
    verify_logins: bool = True
    #: send verifiers even where the server logs them (an explicit opt-out)
    allow_verifier_in_log: bool = False
    drain_quiet_period: float = DEFAULT_DRAIN_QUIET_PERIOD
    #: libpq URLs of the streaming standbys (``[rolekit] replicas`` / ROLEKIT_REPLICAS)
    replicas: tuple[str, ...] = ()
    #: ``replicas = unchecked``: do not refuse standbys that are not configured
    replicas_unchecked: bool = False
    replica_wait: float = DEFAULT_REPLICA_WAIT
    #: PgBouncer admin console URLs (``[rolekit] poolers`` / ROLEKIT_POOLERS)
    poolers: tuple[str, ...] = ()
    #: the rotation policy (``[rolekit] max_age = 90d``) ``status`` and ``check``
    #: apply when no ``--max-age`` is given; ``None``: none
    max_age: str | None = None
    #: ``[rolekit] publish_timeout``: the default of ``rotate auto --publish-timeout``
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT

    @classmethod
    def from_alembic_config(cls, config: Config) -> Settings:
        """The settings of the alembic.ini an Alembic command runs with."""
        ini = project_ini(config.config_file_name or "alembic.ini")
        return cls.from_parser(ini, config.file_config, config.config_ini_section)

    @classmethod
    def from_parser(
        cls, ini: Path, parser: configparser.ConfigParser, main_section: str = "alembic"
    ) -> Settings:
        root = ini.parent
        section = dict(parser.items("rolekit")) if parser.has_section("rolekit") else {}
        url = parser.get(main_section, "sqlalchemy.url", fallback=None)

        def path(value: str) -> Path:
            p = Path(value).expanduser()
            return p if p.is_absolute() else root / p

        words = url_list(variables.REPLICAS.get() or section.get("replicas", ""))
        replicas = tuple(w for w in words if w != REPLICAS_UNCHECKED)
        secrets_files: dict[str, Path] = {}
        min_lengths: dict[str, int] = {}
        for key, value in section.items():
            if key.startswith("secrets."):
                secrets_files[key.removeprefix("secrets.").lower()] = path(value)
            elif key.startswith("min_password_length."):
                min_lengths[key.removeprefix("min_password_length.").lower()] = _int(key, value)
        return cls(
            root=root,
            ini_path=ini,
            database_url=variables.DATABASE_URL.get() or url,
            repeatables_dir=path(section.get("repeatables", "migrations/repeatable")),
            state_file=path(section.get("state", "migrations/rotation.json")),
            default_secrets_file=path(section.get("secrets", "passwords.env")),
            secrets_files=secrets_files,
            min_password_length=min_lengths,
            default_min_password_length=_int(
                "min_password_length",
                section.get("min_password_length", str(DEFAULT_MIN_PASSWORD_LENGTH)),
            ),
            drain_timeout=seconds(
                "drain_timeout",
                variables.DRAIN_TIMEOUT.get() or section.get("drain_timeout"),
                DEFAULT_DRAIN_TIMEOUT,
            ),
            lock_wait=seconds("[rolekit] lock_wait", section.get("lock_wait"), DEFAULT_LOCK_WAIT),
            verify_logins=boolean("[rolekit] verify_logins", section.get("verify_logins"), True),
            allow_verifier_in_log=boolean(
                "[rolekit] allow_verifier_in_log", section.get("allow_verifier_in_log"), False
            ),
            drain_quiet_period=seconds(
                "drain_quiet_period",
                variables.DRAIN_QUIET_PERIOD.get() or section.get("drain_quiet_period"),
                DEFAULT_DRAIN_QUIET_PERIOD,
            ),
            replicas=replicas,
            replicas_unchecked=REPLICAS_UNCHECKED in words,
            replica_wait=seconds(
                "[rolekit] replica_wait", section.get("replica_wait"), DEFAULT_REPLICA_WAIT
            ),
            poolers=url_list(variables.POOLERS.get() or section.get("poolers", "")),
            max_age=_max_age(section.get("max_age")),
            publish_timeout=seconds(
                "[rolekit] publish_timeout",
                section.get("publish_timeout"),
                DEFAULT_PUBLISH_TIMEOUT,
            ),
        )

    @classmethod
    def load(cls, ini_path: str | os.PathLike[str] = "alembic.ini") -> Settings:
        """Read alembic.ini with :mod:`configparser`, as Alembic does (``%(here)s``
        included), without importing Alembic: applications use this too."""
        ini = Path(ini_path)
        if not ini.is_file():
            raise RolekitError(
                f"no Alembic config at {ini}: run from the project folder or pass --config"
            )
        ini = project_ini(ini)
        return cls.from_parser(ini, read_ini(ini))

    def secrets_file(self, context: str) -> Path:
        """The secrets file of *context*: ``secrets.<context>`` or the default."""
        return self.secrets_files.get(context.lower(), self.default_secrets_file)

    def min_length(self, context: str) -> int:
        return self.min_password_length.get(context.lower(), self.default_min_password_length)

    def require_url(self) -> str:
        """The database URL, for psycopg2 whatever PostgreSQL driver it names.

        An async project's ``sqlalchemy.url`` names asyncpg or psycopg:
        rolekit still runs the migrations and its checks through psycopg2
        (they are synchronous, and the verifiers come from psycopg2), while
        the application keeps its own driver.
        """
        if not self.database_url:
            raise RolekitError("no database URL: set DATABASE_URL or sqlalchemy.url in alembic.ini")
        url = parse_url(self.database_url, DATABASE_URL_SOURCE)
        if url.get_backend_name() not in ("postgresql", "postgres"):
            raise RolekitError(
                f"the database URL names {url.drivername!r}: rolekit needs PostgreSQL "
                "(postgresql://user@host:port/database in DATABASE_URL or sqlalchemy.url)"
            )
        if url.drivername.endswith("+asyncpg"):
            url = url.set(query=_libpq_options(dict(url.query)))
        return url.set(drivername=MIGRATION_DRIVER).render_as_string(hide_password=False)


#: asyncpg's URL options with their libpq names; ``None``: the application's
#: driver alone uses it (statement caches, command timeouts), so psycopg2 drops it
_ASYNCPG_OPTIONS = {
    "ssl": "sslmode",
    "timeout": "connect_timeout",
    "command_timeout": None,
    "prepared_statement_cache_size": None,
    "prepared_statement_name_func": None,
}


def _libpq_options(query: dict[str, Any]) -> dict[str, Any]:
    """An asyncpg URL's options as psycopg2 (libpq) understands them."""
    for name, libpq in _ASYNCPG_OPTIONS.items():
        value = query.pop(name, None)
        if value is not None and libpq is not None:
            query[libpq] = {"true": "require", "false": "disable"}.get(str(value).lower(), value)
    return query


def alembic_config(ini: Path) -> Config:
    """The project's Alembic config as its command line reads it: alembic.ini, and
    the pyproject.toml beside it (``alembic init -t pyproject`` keeps
    ``script_location`` there)."""
    from alembic.config import Config  # not at import: rolekit.client needs no Alembic

    toml = ini.parent / "pyproject.toml"
    return Config(str(ini), toml_file=str(toml) if toml.is_file() else None)


def x_argument(env: EnvironmentContext | None, name: str) -> str:
    """An ``alembic -x name=value`` argument ('' when absent or outside Alembic)."""
    return env.get_x_argument(as_dictionary=True).get(name, "") if env is not None else ""


def x_flag(env: EnvironmentContext | None, name: str, default: bool = False) -> bool:
    """``-x name=true`` (or 1, yes, on; false, 0, no, off), else *default*."""
    return boolean(f"-x {name}", x_argument(env, name) or None, default)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def boolean(where: str, value: str | None, default: bool) -> bool:
    """Parse a yes/no setting strictly: a typo is an error, not a silent false."""
    if value is None or not value.strip():
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise RolekitError(f"{where} = {value!r} is not true or false")


def parse_url(value: str, where: str) -> URL:
    """*value* as SQLAlchemy parses it, refused when that parse can be wrong.

    SQLAlchemy ends the password at its first ``@``: ``user:pa@ss@db`` parses
    as host ``ss@db``, and every message naming the host (``status``, an
    upgrade's ``FAILED:`` line, "cannot reach replica ...") would show part of
    the password.  So a URL with a second ``@`` before its options, or a port
    that is not a number, is refused, and no refusal quotes any part of it:
    the whole URL may be a secret.  *where* names the setting.
    """
    from sqlalchemy.engine import make_url  # not at import: rolekit.client needs no SQLAlchemy
    from sqlalchemy.exc import ArgumentError

    encode = "percent-encode '@' as %40, ':' as %3A and '/' as %2F in its user name and password"
    if value.split("?", 1)[0].count("@") > 1:
        raise RolekitError(f"a URL in {where} holds more than one '@': {encode}")
    try:
        url = make_url(value)
    except ArgumentError:
        raise RolekitError(
            f"a URL in {where} is not a postgresql://host:port/db URL "
            f"(postgresql://user:password@host:port/database; {encode})"
        ) from None
    except ValueError:  # SQLAlchemy reads the port as a number while parsing
        raise RolekitError(
            f"a URL in {where} is not a postgresql://host:port/db URL: its port is not a "
            f"number (a password holding ':' or '@' can end up there; {encode})"
        ) from None
    return url


def url_list(value: str) -> tuple[str, ...]:
    """URLs separated by whitespace or commas (a URL holds neither)."""
    return tuple(part for part in value.replace(",", " ").split() if part)


def seconds(where: str, value: str | None, default: float) -> float:
    """Parse a number of seconds (non-negative, finite)."""
    if value is None or not value.strip():
        return default
    try:
        parsed = float(value)
    except ValueError:
        parsed = -1.0
    if not 0 <= parsed < float("inf"):
        raise RolekitError(f"{where} = {value!r} is not a number of seconds")
    return parsed


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RolekitError(f"[rolekit] {key} = {value!r} is not a whole number") from None


#: what the Python API takes as configuration, like Alembic's ``command.*``: an
#: Alembic ``Config``, an alembic.ini path, or settings already resolved
ConfigLike: TypeAlias = "str | os.PathLike[str] | Settings | Config"


def project_ini(ini: str | os.PathLike[str]) -> Path:
    """alembic.ini's path as the project knows it: absolute, symlinks kept.

    Its folder is the project's root, as ``%(here)s`` is for Alembic: a
    symlinked alembic.ini shared by several checkouts belongs to each
    checkout, not to the folder of its target.
    """
    return Path(ini).absolute()


def read_ini(ini: Path, text: str | None = None) -> configparser.ConfigParser:
    """alembic.ini (or *text* as its content) parsed as Alembic parses it:
    ``%(here)s`` is the folder of *ini* as given (see :func:`project_ini`)."""
    parser = configparser.ConfigParser({"here": str(ini.parent), "__file__": str(ini)})
    try:
        if text is None:
            parser.read(ini, encoding="utf-8")
        else:
            parser.read_string(text, source=str(ini))
    except configparser.Error as exc:
        raise RolekitError(f"cannot read {ini}: {first_line(exc)}") from None
    return parser


def load_settings(config: ConfigLike = "alembic.ini") -> Settings:
    """*config* as :class:`Settings`: read from the ini file of a path or of an
    Alembic ``Config`` (its ``config_file_name``, main section and ``%(here)s``)."""
    if isinstance(config, Settings):
        return config
    if isinstance(config, str | os.PathLike):
        return Settings.load(config)
    return Settings.from_alembic_config(config)


def _max_age(value: str | None) -> str | None:
    """``[rolekit] max_age``, checked now so that a typo fails every command at once."""
    if value is None or not value.strip():
        return None
    parse_duration(value, "[rolekit] max_age")
    return value.strip()
