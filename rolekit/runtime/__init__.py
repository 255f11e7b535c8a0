"""env.py glue: rolekit's run around Alembic's migration transaction.

:func:`rolekit.runtime.environment.run_migrations` (and
:class:`~rolekit.runtime.environment.RolekitRun` for a custom env.py) is the
one import a project's ``env.py`` needs; its path is public and stays.
"""
