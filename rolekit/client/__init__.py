"""Let applications follow a password rotation without a redeploy.

During a rotation both members of a family (``my_app_tom``, ``my_app_jerry``)
may log in for a while, then the old one is set ``NOLOGIN``.  An application
that read one user and password at start-up would have to be redeployed at
the right moment; this module instead keeps *both* members' credentials and
which one is preferred, and

* opens every new connection as the **preferred** member;
* on an **authentication failure** refreshes the credentials from their
  source (single-flight: however many threads fail at once, the source is
  read once) and tries the **other** member -- and the newly preferred one
  if the refresh changed it -- so a source that lags behind the database
  costs a failed login, not a failed request;
* never retries anything else: a refused connection or a timeout propagates
  unchanged, since trying the other member cannot help and would hide it.

The credentials come from a :class:`CredentialsProvider`: the project's own
files (``migrations/rotation.json`` and ``passwords.env``, re-read when they
change), a mounted credentials file (:meth:`CredentialsProvider.from_file`:
what ``rolekit creds --format json`` prints, kept current by a Kubernetes
Secret volume or Vault Agent), environment variables, or any callable (a
vault, a secret manager).
Neither Alembic nor the project's migration files are imported: the family's
members come from ``rotation.json`` (or ``members=``), and a driver is
imported only when its helper is first used.

Connections are opened with :func:`connect` (psycopg2), through a SQLAlchemy
engine from :func:`create_engine` (psycopg2, psycopg 3) or
:func:`create_async_engine` (asyncpg, psycopg 3) or :func:`attach`, or with
the driver modules :mod:`rolekit.client.psycopg` (connections,
``psycopg_pool`` pools, sync and async) and :mod:`rolekit.client.asyncpg`
(connections and pools).  Each driver is an optional extra
(``rolekit[psycopg]``, ``rolekit[asyncpg]``, ``rolekit[asyncio]`` for
SQLAlchemy's async engine) and is imported only when used.  User and
password always travel as separate keyword arguments, never inside a
connection string, so no password needs quoting or escaping.

It is the idea of gopqr (two alternating service accounts, a refresher on
credential failure) without its flaws: a network error is never mistaken for
a credential failure, the refresher cannot run many times at once, and
credentials are never built into a DSN.

**How long does a pooled connection stay on the old member?**  A
connection's login is fixed when it is opened, so pooled connections must be
replaced for the old member's sessions to end (which ``alembic upgrade``'s
drain guard waits for).  With an engine from :func:`create_engine`, a pooled
connection is replaced

1. at its next checkout after the source started preferring another member
   (so within the length of the transaction using it, under load);
2. if it was opened on the other member by a fallback (typically: the
   application saw the new ``rotation.json`` before ``alembic upgrade``
   applied it): at its first checkout ``fallback_recycle`` seconds (default
   10) after it was opened, unless the preferred member was rejected within
   that time (it would fail again);
3. at the first checkout ``pool_recycle`` seconds (default 300) after it was
   opened, whatever happens;
4. when ``pool_pre_ping`` finds it dead, e.g. ended by
   ``-x terminate=true``.

A connection sitting idle in the pool is only looked at when it is checked
out.  QueuePool hands connections out first-in first-out, so under any steady
load every pooled connection is checked out, hence moved, within moments;
an idle application keeps its old sessions until the drain timeout, where
``-x terminate=true`` ends them harmlessly (pre-ping replaces them at the
next checkout).  Choose the drain timeout larger than ``fallback_recycle``
plus the longest transaction plus the time between two uses of the pool.

An application whose source lags (it still prefers the old member after
``finish``) keeps its open connections on the old member -- ``NOLOGIN`` ends
no session -- so the drain cannot complete and needs ``-x terminate=true``;
afterwards its new connections fall back to the new member until the source
catches up.

Authentication failures are recognised by SQLSTATE ``28P01``/``28000`` when
the driver reports one, else by the server's English message (psycopg2 leaves
``pgcode`` empty for errors raised while connecting): servers with a
translated ``lc_messages`` need ``lc_messages = 'C'`` for the fallback to
work -- otherwise the error simply propagates, as any other.

Everything is logged to the ``rolekit.client`` logger, never a password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rolekit.client._provider import CredentialsProvider
from rolekit.errors import BothMembersFailedError
from rolekit.project.credentials import Credentials

if TYPE_CHECKING:  # imported on first use: each pulls in its driver
    from rolekit.client._fallback import auth_failure_reason
    from rolekit.client._psycopg2 import connect
    from rolekit.client._sqlalchemy import (
        DEFAULT_FALLBACK_RECYCLE,
        DEFAULT_POOL_RECYCLE,
        attach,
        create_async_engine,
        create_engine,
    )

__all__ = [
    "DEFAULT_FALLBACK_RECYCLE",
    "DEFAULT_POOL_RECYCLE",
    "BothMembersFailedError",
    "Credentials",
    "CredentialsProvider",
    "attach",
    "auth_failure_reason",
    "connect",
    "create_async_engine",
    "create_engine",
]

#: public name -> the private module that defines it (and imports its driver)
_LAZY = {
    "auth_failure_reason": "rolekit.client._fallback",
    "connect": "rolekit.client._psycopg2",
    "attach": "rolekit.client._sqlalchemy",
    "create_engine": "rolekit.client._sqlalchemy",
    "create_async_engine": "rolekit.client._sqlalchemy",
    "DEFAULT_FALLBACK_RECYCLE": "rolekit.client._placement",  # no SQLAlchemy needed
    "DEFAULT_POOL_RECYCLE": "rolekit.client._sqlalchemy",
}


def __getattr__(name: str) -> Any:
    """Import a driver's helpers when the application first uses them (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rolekit.client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
