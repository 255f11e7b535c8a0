r"""A psycopg 3 worker on a ``psycopg_pool`` pool that logs in through rolekit.

Runs N queries (default 10) on 4 threads sharing one pool and prints the
session user of each, one per line: the family member the pool's connection
logged in as (``my_app_tom``, or ``my_app_jerry`` once a rotation prefers it).
``rolekit.client.psycopg.connection_pool`` opens connections as the preferred
member, falls back to the other one if the server rejects that login, and
replaces a pooled connection when it is handed out on the wrong member.

Run (``pip install 'rolekit[psycopg]'``)::

    ROLEKIT_CREDENTIALS_FILE=creds.json APP_DATABASE_URL=postgresql://db:5432/app \
        python examples/psycopg_pool_worker.py 20

    # or from the rolekit project's files (alembic.ini, rotation.json, passwords.env)
    ROLEKIT_INI=alembic.ini ROLEKIT_FAMILY=my_app ROLEKIT_CONTEXT=dev \
        python examples/psycopg_pool_worker.py 20

``creds.json`` is what ``rolekit creds my_app --context dev --format json
--output creds.json`` writes; it is re-read whenever it changes.
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from psycopg_pool import ConnectionPool

from rolekit.client import CredentialsProvider
from rolekit.client.psycopg import connection_pool


def load_provider() -> CredentialsProvider:
    """A mounted credentials file if one is named, else the rolekit project's files."""
    family = os.environ.get("ROLEKIT_FAMILY", "my_app")
    context = os.environ.get("ROLEKIT_CONTEXT", "dev")
    if path := os.environ.get("ROLEKIT_CREDENTIALS_FILE"):
        # another family's or context's document is refused, at start-up too
        return CredentialsProvider.from_file(path, family=family, context=context)
    return CredentialsProvider.from_alembic_ini(
        os.environ.get("ROLEKIT_INI", "alembic.ini"), family, context
    )


def session_user(pool: ConnectionPool[Any]) -> str:
    with pool.connection() as conn:
        row = conn.execute("SELECT session_user").fetchone()
    assert row is not None
    return str(row[0])


def main(queries: int) -> None:
    # rolekit.client logs which member it prefers, refreshes and fallbacks; never a password
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # a libpq URL or "host=... dbname=...": no user or password, the provider has them
    conninfo = os.environ.get("APP_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
    with (
        connection_pool(load_provider(), conninfo, min_size=1, max_size=4, open=True) as pool,
        ThreadPoolExecutor(max_workers=4) as threads,
    ):
        for user in threads.map(lambda _: session_user(pool), range(queries)):
            print(user, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
