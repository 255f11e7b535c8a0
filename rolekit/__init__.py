"""rolekit: zero-downtime PostgreSQL password rotation as Alembic migrations.

The public surface is small:

* ``op.create_role_family`` / ``op.drop_role_family`` in revisions
  (registered by importing :mod:`rolekit.operations`);
* the repeatables in :mod:`rolekit.repeatable`;
* :func:`rolekit.runtime.environment.run_migrations` for ``env.py``;
* :mod:`rolekit.client` for applications;
* :mod:`rolekit.command`, the Python API of the ``rolekit`` command
  (``rolekit init`` adds rolekit to an Alembic project: :mod:`rolekit.scaffold`).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """``rolekit.__version__``, read from the installed metadata on first use only:
    reading it costs an ``alembic upgrade`` a few milliseconds it never needs."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        #: the installed distribution's version: pyproject.toml is its one source
        found = version("rolekit")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
