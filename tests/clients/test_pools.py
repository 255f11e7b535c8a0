"""Pools move without making anyone wait, whatever their options; bad arguments are named.

A move is a change of the preferred member: every pooled connection must
end up on the new one (the drain of ``finish`` waits for the old one's
sessions), idle ones included, and a pool option a user may set
(``close_returns``, no ``check``) must not break it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from rolekit.client import Credentials, CredentialsProvider
from rolekit.client import asyncpg as rk_asyncpg
from rolekit.client import psycopg as rk_psycopg
from rolekit.testing import Project
from tests.clients.helpers import JERRY, TOM, session_users, set_state, wait_for
from tests.clients.test_drivers import conninfo, project_provider


def _start_overlap(project: Project) -> None:
    """jerry gets a fresh password and becomes preferred; both may log in."""
    project.set_password(JERRY, "dev")
    set_state(project, [TOM, JERRY], incoming=JERRY)
    project.upgrade("dev")


@pytest.mark.parametrize(
    ("close_returns", "drain"),
    [(False, True), (True, True), (False, False)],
    ids=["drain", "drain-close_returns", "psycopg_pool-before-3.3-reset"],
)
def test_a_psycopg_pool_moves_every_connection_without_a_stall(
    project: Project,
    close_returns: bool,
    drain: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``drain()`` (psycopg_pool 3.3+) and, forced here, without it (the
    ``reset`` path of older pools): a real pool on a real server either way."""
    monkeypatch.setattr(rk_psycopg, "_POOLS_DRAIN", drain)
    project.upgrade("dev")
    provider = project_provider(project)
    pool = rk_psycopg.connection_pool(
        provider, conninfo(project.cluster), min_size=4, max_size=4, open=True,
        close_returns=close_returns,
    )  # fmt: skip
    try:
        pool.wait()
        assert session_users(project.cluster) == {TOM: 4}
        _start_overlap(project)
        caplog.set_level(logging.INFO, logger="psycopg.pool")

        def one_query() -> str:
            with pool.connection() as conn:
                row = conn.execute("SELECT session_user").fetchone()
            return str(row[0]) if row else "?"

        # the first hand-out drains the pool (or each connection moves when
        # returned); the connections handed out meanwhile still work
        def moved() -> bool:
            assert {one_query() for _ in range(8)} <= {TOM, JERRY}
            return session_users(project.cluster) == {JERRY: 4}

        wait_for("every pooled connection on jerry", moved)
        assert {one_query() for _ in range(20)} == {JERRY}
        # no connection failed its check: psycopg_pool sleeps about a second
        # before it tries another, so each failed check is a stalled request
        messages = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
        assert any("connection given by" in m for m in messages)  # the pool's log is seen
        assert [m for m in messages if "failed check" in m] == []
    finally:
        pool.close()


def test_an_idle_asyncpg_pool_moves_without_being_used(project: Project) -> None:
    project.upgrade("dev")
    provider = project_provider(project)

    async def scenario() -> None:
        pool = await rk_asyncpg.create_pool(
            provider, host=project.cluster.host, port=project.cluster.port,
            database="postgres", min_size=4, max_size=4,
        )  # fmt: skip
        try:
            assert session_users(project.cluster) == {TOM: 4}
            await asyncio.to_thread(_start_overlap, project)
            # nobody acquires: the watcher replaces the idle connections itself
            await asyncio.to_thread(
                wait_for,
                "the idle connections on jerry",
                lambda: session_users(project.cluster) == {JERRY: 4},
            )
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT session_user") == JERRY
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_an_async_psycopg_pool_moves_every_connection(project: Project) -> None:
    project.upgrade("dev")
    provider = project_provider(project)

    async def scenario() -> None:
        pool = rk_psycopg.async_connection_pool(
            provider, conninfo(project.cluster), min_size=4, max_size=4, open=False
        )
        await pool.open(wait=True)
        try:
            assert session_users(project.cluster) == {TOM: 4}
            await asyncio.to_thread(_start_overlap, project)
            deadline = time.monotonic() + 20
            while session_users(project.cluster) != {JERRY: 4}:
                assert time.monotonic() < deadline, session_users(project.cluster)
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                await asyncio.sleep(0.05)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_credentials_and_hooks_rolekit_supplies_are_refused() -> None:
    provider = CredentialsProvider(lambda: Credentials.of(TOM, "secret-1"))
    with pytest.raises(ValueError, match="conninfo must not carry a password"):
        rk_psycopg.connection_pool(provider, "host=db password=s3cret", open=False)
    with pytest.raises(TypeError, match="kwargs takes no 'user'"):
        rk_psycopg.connection_pool(provider, "host=db", kwargs={"user": "x"}, open=False)
    with pytest.raises(TypeError, match="takes no 'connection_class'"):
        rk_psycopg.async_connection_pool(provider, "", connection_class=object, open=False)

    async def refused(**kw: Any) -> None:
        await rk_asyncpg.create_pool(provider, **kw)

    with pytest.raises(ValueError, match="DSN must not carry a user or password"):
        asyncio.run(refused(dsn="postgresql://u:s3cret@db/app"))
    with pytest.raises(TypeError, match="takes no 'connect'"):
        asyncio.run(refused(connect=object()))
