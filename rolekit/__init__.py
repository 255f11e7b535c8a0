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

__version__ = "0.1.0"
