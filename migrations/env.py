"""Alembic environment for the example project: migrations, then repeatables.

The database URL comes from ``DATABASE_URL`` when set, else alembic.ini.
Options: ``-x context=dev`` (or ``ROLEKIT_CONTEXT``), ``-x drain_timeout=S``,
``-x terminate=true``, and ``-x pg_version=N`` for offline ``--sql`` runs.
"""

from logging.config import fileConfig

from alembic import context

from rolekit.runtime.environment import run_migrations

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_migrations(context)
