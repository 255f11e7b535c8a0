"""Runs rolekit inside an Alembic migration: the session, env.py glue, config."""
