"""Key names (``<role>.password.<context>``), password generation and strength."""

from __future__ import annotations

import re
import secrets as _stdlib_secrets
import string
from typing import Final

from rolekit.errors import RoleNameError, SecretsError
from rolekit.model.contexts import check_context_name
from rolekit.secrets._secret import Secret

#: shortest password :func:`check_strength` accepts unless told otherwise
DEFAULT_MIN_LENGTH: Final = 16
#: length of the passwords rolekit generates (about 190 bits)
DEFAULT_PASSWORD_LENGTH: Final = 32
#: alphabet of :func:`generate_password`: nothing dotenv, a shell or a URL
#: would need to quote or escape
PASSWORD_ALPHABET: Final = string.ascii_letters + string.digits + "-_"

# Role names may hold almost anything PostgreSQL allows, but not what would
# break a dotenv key; contexts follow rolekit.model.contexts' rule (no dot), so the
# key splits uniquely.
_ROLE_RE: Final = re.compile(r"[^\s=#'\"\\]+")
KEY_RE: Final = re.compile(r"(?P<role>.+)\.password\.(?P<context>[^.]+)")


def secret_key(role: str, context: str) -> str:
    """Return the dotenv key of ``role``'s password in ``context``.

    The form ``<role>.password.<context>`` mirrors Liquibase property names
    so existing files can be reused.  Contexts are case-insensitive (as in
    Liquibase), so the context is lower-cased: ``Dev`` and ``dev`` share a
    key.

    :raises RoleNameError: ``role`` is empty or holds a character a dotenv
        key cannot carry (whitespace, ``=``, ``#``, quotes, backslash).
    :raises ContextExpressionError: ``context`` is empty or holds such a
        character or a dot.
    """
    if not _ROLE_RE.fullmatch(role):
        raise RoleNameError(
            f"role name {role!r} cannot be used in a secrets file key: it must "
            "be non-empty without whitespace, '=', '#', quotes or backslashes"
        )
    return f"{role}.password.{check_context_name(context)}"


def context_of(key: str) -> str | None:
    """Return the context of a rolekit key, or ``None`` for another key."""
    match = KEY_RE.fullmatch(key)
    return match["context"] if match else None


def generate_password(length: int = DEFAULT_PASSWORD_LENGTH) -> str:
    """Return a random password of ``length`` characters.

    The alphabet (letters, digits, ``-``, ``_``) needs no quoting in dotenv,
    a shell or a connection URL, and still gives almost 6 bits per
    character: the default 32 characters carry about 190 bits.

    :raises ValueError: ``length`` is less than 1.
    """
    if length < 1:
        raise ValueError(f"password length must be at least 1, not {length}")
    return "".join(_stdlib_secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def check_strength(
    role: str, context: str, secret: Secret, min_length: int = DEFAULT_MIN_LENGTH
) -> None:
    """Refuse a password shorter than ``min_length`` characters.

    Length is what matters for the random passwords rolekit expects; a short
    one usually means a placeholder (``changeme``) was left in the file.  The
    message names the key, the context and the required length, not the
    password nor its actual length.

    :raises SecretsError: the password is too short.
    :raises ValueError: ``min_length`` is less than 1.
    """
    if min_length < 1:
        raise ValueError(f"min_length must be at least 1, not {min_length}")
    if len(secret.reveal()) < min_length:
        key = secret_key(role, context)
        raise SecretsError(
            f"password {key!r} of role {role!r} in context {context.lower()!r} "
            f"is too short: at least {min_length} characters are required "
            f"(generate one with rolekit.secrets.generate_password())"
        )
