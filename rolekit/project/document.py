"""The credentials document: what ``rolekit creds --format json`` prints and
:meth:`CredentialsProvider.from_file` reads.

One JSON object with both members that may log in, the preferred one first::

    {"family": "my_app", "context": "prod",
     "user": "my_app_jerry", "password": "...",
     "alt_user": "my_app_tom", "alt_password": "..."}

``alt_user``/``alt_password`` are there during a rotation's overlap, when
the old member still works: an application that finds the new one refused
(its copy of the document ran ahead of the database) falls back to it.
"""

from __future__ import annotations

import json
from typing import Any, Final, NamedTuple

from rolekit.errors import RolekitError
from rolekit.project.credentials import Credentials

#: keys of the document; ``family`` and ``context`` say whose credentials they are
#: (``from_file`` refuses a document of another family or context)
KEYS: Final = ("family", "context", "user", "password", "alt_user", "alt_password")


class Document(NamedTuple):
    """A parsed document: whose credentials (``None`` where it does not say), and them."""

    family: str | None
    context: str | None
    credentials: Credentials


def to_document(creds: Credentials, family: str, context: str) -> dict[str, str]:
    """The document of *creds* (passwords revealed: it is meant for a secret store)."""
    document = {"family": family, "context": context}
    document["user"], secret = creds.preferred
    document["password"] = secret.reveal()
    if creds.alternate is not None:
        document["alt_user"], alt_secret = creds.alternate
        document["alt_password"] = alt_secret.reveal()
    return document


def from_document(text: str, where: str) -> Credentials:
    """The credentials of a document; errors name *where* and the problem, never a value."""
    return read_document(text, where).credentials


def read_document(text: str, where: str) -> Document:
    """Parse a document; errors name *where* and the problem, never a value."""
    if not text.strip():
        raise RolekitError(f"{where} is empty")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the text may hold a password
        raise RolekitError(
            f"{where} is not a complete JSON document ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise RolekitError(f"{where}: expected a JSON object")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise RolekitError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    for key in KEYS:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise RolekitError(f"{where}: {key!r} must be a non-empty string")
    if data.get("user") is None or data.get("password") is None:
        raise RolekitError(f"{where}: 'user' and 'password' are required")
    if (data.get("alt_user") is None) != (data.get("alt_password") is None):
        raise RolekitError(f"{where}: give both 'alt_user' and 'alt_password', or neither")
    try:
        credentials = Credentials.of(
            data["user"], data["password"], data.get("alt_user"), data.get("alt_password")
        )
    except ValueError as exc:
        raise RolekitError(f"{where}: {exc}") from None
    return Document(data.get("family"), data.get("context"), credentials)
