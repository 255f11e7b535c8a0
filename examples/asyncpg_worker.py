r"""An asyncio worker on an asyncpg pool that logs in through rolekit.

Runs N queries (default 10) concurrently on one pool and prints the session
user of each, one per line: the family member the pool's connection logged
in as (``my_app_tom``, or ``my_app_jerry`` once a rotation prefers it).
``rolekit.client.asyncpg.create_pool`` opens connections as the preferred
member, falls back to the other one if the server rejects that login, and
expires the pool's connections once the source prefers another member.  The
credentials source is never read on the event loop.

Run (``pip install 'rolekit[asyncpg]'``)::

    ROLEKIT_CREDENTIALS_FILE=creds.json APP_DATABASE_URL=postgresql://db:5432/app \
        python examples/asyncpg_worker.py 20

    # or from the rolekit project's files (alembic.ini, rotation.json, passwords.env)
    ROLEKIT_INI=alembic.ini ROLEKIT_FAMILY=my_app ROLEKIT_CONTEXT=dev \
        python examples/asyncpg_worker.py 20

``creds.json`` is what ``rolekit creds my_app --context dev --format json
--output creds.json`` writes; it is re-read whenever it changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import asyncpg

from rolekit.client import CredentialsProvider
from rolekit.client.asyncpg import create_pool


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


async def session_user(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn:
        return str(await conn.fetchval("SELECT session_user"))


async def main(queries: int) -> None:
    # rolekit.client logs which member it prefers, refreshes and fallbacks; never a password
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # reading the source is file I/O: keep it off the event loop, as rolekit does
    provider = await asyncio.to_thread(load_provider)
    # no user or password in the DSN: the provider supplies them per connection
    dsn = os.environ.get("APP_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
    pool = await create_pool(provider, dsn, min_size=1, max_size=4)
    try:
        for user in await asyncio.gather(*(session_user(pool) for _ in range(queries))):
            print(user, flush=True)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
