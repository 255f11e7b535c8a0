"""Project settings: the database URL and the ``[rolekit]`` section of alembic.ini.

The CLI and ``migrations/env.py`` both read settings here, so they always
agree on which database, secrets file and state file they mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext

from rolekit.errors import RolekitError

DEFAULT_DRAIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Settings:
    """Where a rolekit project keeps things, resolved against alembic.ini's folder."""

    root: Path
    database_url: str | None
    repeatables_dir: Path
    state_file: Path
    default_secrets_file: Path
    secrets_files: dict[str, Path] = field(default_factory=dict)
    min_password_length: dict[str, int] = field(default_factory=dict)
    default_min_password_length: int = 16
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT

    @classmethod
    def from_alembic_config(cls, config: Config) -> Settings:
        ini = Path(config.config_file_name or "alembic.ini").resolve()
        root = ini.parent
        section = (
            config.get_section("rolekit", {}) if config.file_config.has_section("rolekit") else {}
        )

        def path(value: str) -> Path:
            p = Path(value).expanduser()
            return p if p.is_absolute() else root / p

        secrets_files: dict[str, Path] = {}
        min_lengths: dict[str, int] = {}
        for key, value in section.items():
            if key.startswith("secrets."):
                secrets_files[key.removeprefix("secrets.").lower()] = path(value)
            elif key.startswith("min_password_length."):
                min_lengths[key.removeprefix("min_password_length.").lower()] = _int(key, value)
        return cls(
            root=root,
            database_url=os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url"),
            repeatables_dir=path(section.get("repeatables", "migrations/repeatable")),
            state_file=path(section.get("state", "migrations/rotation.json")),
            default_secrets_file=path(section.get("secrets", "passwords.env")),
            secrets_files=secrets_files,
            min_password_length=min_lengths,
            default_min_password_length=_int(
                "min_password_length", section.get("min_password_length", "16")
            ),
            drain_timeout=float(section.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)),
        )

    @classmethod
    def load(cls, ini_path: str | os.PathLike[str] = "alembic.ini") -> Settings:
        ini = Path(ini_path)
        if not ini.is_file():
            raise RolekitError(
                f"no Alembic config at {ini}: run from the project folder or pass --config"
            )
        return cls.from_alembic_config(Config(str(ini)))

    def secrets_file(self, context: str) -> Path:
        """The secrets file of *context*: ``secrets.<context>`` or the default."""
        return self.secrets_files.get(context.lower(), self.default_secrets_file)

    def min_length(self, context: str) -> int:
        return self.min_password_length.get(context.lower(), self.default_min_password_length)

    def require_url(self) -> str:
        if not self.database_url:
            raise RolekitError("no database URL: set DATABASE_URL or sqlalchemy.url in alembic.ini")
        return self.database_url


def x_argument(env: EnvironmentContext | None, name: str) -> str:
    """An ``alembic -x name=value`` argument ('' when absent or outside Alembic)."""
    return env.get_x_argument(as_dictionary=True).get(name, "") if env is not None else ""


def x_flag(env: EnvironmentContext | None, name: str) -> bool:
    """Whether ``-x name=true`` (or 1, yes) was given."""
    return x_argument(env, name).lower() in ("1", "true", "yes")


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RolekitError(f"[rolekit] {key} = {value!r} is not a whole number") from None
