"""Role name validation.

PostgreSQL silently truncates identifiers longer than 63 bytes, so a long
name would create a role other than the one declared.  rolekit also refuses
names that need quoting: a name the user writes unquoted in a hand-written
``GRANT ... TO my_app`` must mean the same role rolekit created, and quoted
names are where injection and confusion bugs live.  rolekit still composes
every identifier with :class:`psycopg2.sql.Identifier`.
"""

from __future__ import annotations

import re

from rolekit.errors import RoleNameError

#: PostgreSQL's NAMEDATALEN - 1
MAX_NAME_BYTES = 63

_VALID = re.compile(r"[a-z_][a-z0-9_]*")

# Names PostgreSQL refuses or treats specially in GRANT/SET ROLE.
_RESERVED = frozenset(
    {"public", "none", "current_user", "session_user", "current_role", "user", "all"}
)


def check_role_name(name: object, *, what: str = "role name") -> str:
    """Return *name* if it is a role name rolekit accepts, else raise.

    :raises RoleNameError: naming the problem and showing the name escaped,
        so control characters cannot forge terminal output.
    """
    if not isinstance(name, str):
        raise RoleNameError(f"{what} must be a string, got {type(name).__name__}")
    shown = ascii(name[:80]) + ("..." if len(name) > 80 else "")
    if not name:
        raise RoleNameError(f"{what} is empty")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise RoleNameError(
            f"{what} {shown} is {size} bytes; PostgreSQL would silently truncate "
            f"it to {MAX_NAME_BYTES} bytes"
        )
    if not _VALID.fullmatch(name):
        raise RoleNameError(
            f"{what} {shown} is not allowed: use lower-case ASCII letters, digits "
            "and underscores, starting with a letter or underscore (no quotes, "
            "spaces, semicolons, backslashes or non-ASCII characters)"
        )
    if name.startswith("pg_"):
        raise RoleNameError(
            f"{what} {shown} is reserved: names starting with pg_ belong to PostgreSQL"
        )
    if name in _RESERVED:
        raise RoleNameError(f"{what} {shown} is a reserved word in role specifications")
    return name
