r"""FastAPI on SQLAlchemy's async engine (asyncpg), following password rotations.

``GET /whoami`` returns ``{"user": session_user}``: the family member this
request's connection logged in as.  During a rotation it changes from
``my_app_tom`` to ``my_app_jerry`` without a restart: the engine from
``rolekit.client.create_async_engine`` opens connections as the preferred
member and replaces pooled ones once the credentials source prefers another.

Run (``pip install 'rolekit[asyncpg,asyncio]' fastapi uvicorn``)::

    # credentials from a file that `rolekit creds ... --format json --output` keeps current
    ROLEKIT_CREDENTIALS_FILE=/etc/rolekit/credentials.json \
    APP_DATABASE_URL=postgresql://db:5432/app \
        uvicorn --app-dir examples fastapi_async_sqlalchemy:app

    # or straight from the rolekit project (alembic.ini, rotation.json, passwords.env)
    ROLEKIT_INI=alembic.ini ROLEKIT_FAMILY=my_app ROLEKIT_CONTEXT=dev \
        uvicorn --app-dir examples fastapi_async_sqlalchemy:app

``APP_DATABASE_URL`` names host, port and database only: the user and the
password always come from the provider.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from sqlalchemy import text

from rolekit.client import CredentialsProvider, create_async_engine


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # the source is read once now (a wrong path fails at start-up), off the event loop
    provider = await asyncio.to_thread(load_provider)
    # no user or password in the URL; postgresql:// means asyncpg here
    url = os.environ.get("APP_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
    app.state.engine = create_async_engine(url, provider, pool_size=5)
    yield
    await app.state.engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/whoami")
async def whoami(request: Request) -> dict[str, str]:
    async with request.app.state.engine.connect() as conn:
        user = await conn.scalar(text("SELECT session_user"))
    return {"user": str(user)}
