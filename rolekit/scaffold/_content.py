"""The text ``rolekit init`` writes: the ``[rolekit]`` section, ignore rules, the
example secrets file, a family's repeatables and its first revision."""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from rolekit.project.config import DEFAULT_DRAIN_QUIET_PERIOD, DEFAULT_DRAIN_TIMEOUT
from rolekit.secrets import secret_key

#: a logger for rolekit, so an upgrade shows which repeatables ran and why
LOGGER_SECTION = """
[logger_rolekit]
level = INFO
handlers =
qualname = rolekit
"""


def rolekit_section(repeatables: str, state: str) -> str:
    """The ``[rolekit]`` section, paths relative to alembic.ini's folder."""
    return f"""[rolekit]
# Added by `rolekit init`; every setting is described in rolekit's README.
# Folder of repeatables (*.py files, each with a REPEATABLES list).
repeatables = {repeatables}
# The committed rotation state: which member of each family may log in, per context.
state = {state}
# Secrets: a git-ignored dotenv file; per context: secrets.<context> = path
# (a path ending in .age is decrypted with age, so it can be committed).
secrets = passwords.env
# secrets.prod = passwords.prod.env.age
# min_password_length = 16
# The rotation policy `rolekit check`, `status` and `rotate auto` apply.
# max_age = 90d
# Seconds `rotate finish` waits for the old member to drain (quiet period included).
# drain_timeout = {DEFAULT_DRAIN_TIMEOUT:g}
# Seconds the old member must go unseen everywhere before it is disabled.
# drain_quiet_period = {DEFAULT_DRAIN_QUIET_PERIOD:g}
# Streaming standbys and PgBouncer admin consoles to watch too (libpq URLs).
# replicas = postgresql://replica1:5432/app
# poolers = postgresql://pgbouncer_admin@pooler:6432/pgbouncer

"""


def add_rolekit_section(ini: str, section: str) -> str:
    """*ini* with *section* before its logging configuration (else at the end),
    and a ``rolekit`` logger when it configures loggers."""
    lines = ini.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.strip() == "[loggers]"), len(lines))
    while at > 0 and lines[at - 1].lstrip().startswith("#"):
        at -= 1  # keep a comment that introduces the logging sections with them
    if at == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    text = "".join([*lines[:at], section, *lines[at:]])
    return _with_rolekit_logger(text)


_LOGGER_KEYS = re.compile(r"(?ms)^\[loggers\][^\[]*?^keys\s*=\s*(?P<keys>[^\n]*)$")


def _with_rolekit_logger(ini: str) -> str:
    found = _LOGGER_KEYS.search(ini)
    if found is None or "[logger_rolekit]" in ini:
        return ini
    keys = [k.strip() for k in found["keys"].split(",") if k.strip()]
    if "rolekit" in keys:
        return ini
    start, end = found.span("keys")
    ini = ini[:start] + ",".join([*keys, "rolekit"]) + ini[end:]
    return ini + ("" if ini.endswith("\n") else "\n") + LOGGER_SECTION


EXAMPLE_HEADER = """\
# Copy to passwords.env (git-ignored; chmod 600) and fill in, or generate each with
#   rolekit gen-password ROLE --context CONTEXT --write
# Keys: <role>.password.<context>. Only the member that logs in needs one at first.
"""


def example_lines(members: Sequence[str], contexts: Sequence[str]) -> list[str]:
    return [f"{secret_key(m, c)}=\n" for c in contexts for m in members]


def repeatables_module(family: str, members: Sequence[str], contexts: Sequence[str]) -> str:
    """A family's repeatables: its passwords per context, then who may log in."""
    passwords = "".join(
        f"    SetPasswords({f'set_passwords_{family}_{c}'!r}, MEMBERS, context={c!r}),\n"
        for c in contexts
    )
    return f'''"""Repeatables of the {family} role family (written by `rolekit init`).

* set_passwords_{family}_<context>: sets a member's password when its key
  <role>.password.<context> in the context's secrets file changes;
* allow_login_for_{family}: lets log in the members the rotation state names
  (migrations' rotation.json), with the lockout, password and drain guards.
"""

from rolekit.repeatable import FamilyLogin, SetPasswords

MEMBERS = {list(members)!r}

REPEATABLES = [
{passwords}    FamilyLogin({f"allow_login_for_{family}"!r}, {family!r}, MEMBERS),
]
'''


def revision_bodies(family: str, members: Sequence[str]) -> tuple[str, str]:
    """The upgrade and downgrade of a family's first revision."""
    names = repr(list(members))
    return (
        f"op.create_role_family({family!r}, {names})",
        f"op.drop_role_family({family!r}, {names})",
    )


def creates_family(source: str, family: str) -> bool:
    """Whether a revision's source calls ``op.create_role_family(family, ...)``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "create_role_family"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == family
        ):
            return True
    return False


REPEATABLES_README = """\
# Repeatables

rolekit imports every `*.py` file here (in name order; names starting with `_`
are skipped) and runs the repeatables of its `REPEATABLES` list at the end of
each `alembic upgrade`, when what they would send changed: passwords from the
secrets file, who may log in from the rotation state, SQL files. Written by
`rolekit init`; `rolekit init --family NAME --members A,B` adds a family's.
"""
