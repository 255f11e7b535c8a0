"""psycopg2: :func:`connect` through a provider (imports the driver)."""

from __future__ import annotations

from typing import Any

import psycopg2

from rolekit.client._fallback import open_with_fallback, refuse_credentials
from rolekit.client._provider import CredentialsProvider
from rolekit.secrets import Secret


def connect(provider: CredentialsProvider, dsn: str | None = None, **kwargs: Any) -> Any:
    """Open a psycopg2 connection as the preferred member, falling back on a rejected login.

    User and password are passed as ``user=``/``password=`` keyword
    arguments, which override any in ``dsn``; everything else (``host``,
    ``dbname``, ``connect_timeout``, ``application_name``...) is passed on
    unchanged.  An error other than a rejected login propagates as is, with
    no retry and no refresh.

    :raises BothMembersFailedError: every known member was rejected.
    :raises psycopg2.OperationalError: any other failure to connect.
    :raises TypeError: ``user`` or ``password`` is given (the provider
        supplies them).
    """
    refuse_credentials(kwargs, "connect()")

    def open_(user: str, password: Secret) -> Any:
        return psycopg2.connect(dsn, user=user, password=password.reveal(), **kwargs)

    return open_with_fallback(provider, open_)[0]
