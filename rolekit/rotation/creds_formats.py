"""``rolekit creds --format``: the credentials in the formats deploy systems read.

Every format carries the members that may log in now, the preferred one
first, so a consumer that can fall back (``rolekit.client``) does:

========== ================================================================
format     made for
========== ================================================================
json       ``CredentialsProvider.from_file`` (a mounted file), any program
env        a POSIX shell (``set -a; . ./creds.env; set +a``), values quoted
           for it: libpq's ``PGUSER``/``PGPASSWORD`` and the
           ``<FAMILY>_USER``/``_PASSWORD``/``_ALT_USER``/``_ALT_PASSWORD``
           that ``CredentialsProvider.from_env("<FAMILY>")`` reads
pgpass     libpq's password file (``~/.pgpass``, ``PGPASSFILE``): one line
           per member
k8s-secret ``kubectl apply --server-side --field-manager=rolekit -f -``: a
           ``v1`` ``Secret`` (JSON) with a stable name and labels (server-side:
           a client-side apply copies the values into the
           ``last-applied-configuration`` annotation); ``credentials.json`` for a volume read by
           ``from_file``, ``PGUSER``/``PGPASSWORD`` for ``envFrom``
pgbouncer  PgBouncer's ``auth_file`` (``userlist.txt``): the SCRAM verifiers
           the server stores, never a password (PgBouncer logs in to the
           server with a client's SCRAM keys only when its verifier is the
           server's own, same salt and iterations)
url        a libpq URL for the preferred member, password percent-encoded
========== ================================================================

Nothing here prints: :func:`render` returns the text, and the CLI writes it
to stdout or (``--output``) to a 0600 file, atomically.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from rolekit.errors import RolekitError
from rolekit.project.credentials import Credentials
from rolekit.project.document import to_document
from rolekit.secrets import Secret

#: ``rolekit creds --help``: the formats, and what consumes each
HELP: Final = (
    "Both members that may log in, the preferred one first (during a rotation's overlap\n"
    "an application that can fall back uses the second when the first is refused).\n"
    "Formats, and what each is for:\n"
    "  json        CredentialsProvider.from_file (a mounted file); same as --json\n"
    "  env         a POSIX shell: set -a; . ./creds.env; set +a (values quoted for sh):\n"
    "              PGUSER, PGPASSWORD and <FAMILY>_USER/_PASSWORD/_ALT_USER/_ALT_PASSWORD\n"
    "              (CredentialsProvider.from_env('<FAMILY>'))\n"
    "  pgpass      libpq's password file, one line per member\n"
    "  k8s-secret  a v1 Secret (stable name, labels) for\n"
    "              'kubectl apply --server-side --field-manager=rolekit -f -' (a client-side\n"
    "              apply would copy its values into an annotation anyone reading it sees)\n"
    "  pgbouncer   PgBouncer auth_file lines: the SCRAM verifiers the server stores\n"
    "              (read from pg_authid: needs a superuser), never a password\n"
    "  url         postgresql://user:password@host:port/db (password percent-encoded)\n"
    "Secrets go to stdout, or with --output to a file written atomically with mode 0600;\n"
    "never to arguments or the environment of other processes."
)

#: the key of the credentials document in the Kubernetes Secret
K8S_DOCUMENT_KEY: Final = "credentials.json"


@dataclass(frozen=True)
class Target:
    """What the server says: where applications connect (the project's URL, or
    ``--host``...) and, for ``pgbouncer``, the members' stored SCRAM verifiers."""

    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    verifiers: Mapping[str, str] | None = field(default=None, repr=False)


def render(
    fmt: str, creds: Credentials, family: str, context: str, target: Target = Target()
) -> str:
    """The text of *creds* in *fmt* (one of :data:`FORMATS`)."""
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise RolekitError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return renderer(creds, family, context, target)


def _json(creds: Credentials, family: str, context: str, target: Target) -> str:
    return json.dumps(to_document(creds, family, context), indent=2) + "\n"


def env_prefix(family: str) -> str:
    return family.upper()


def _env(creds: Credentials, family: str, context: str, target: Target) -> str:
    user, secret = creds.preferred
    prefix = env_prefix(family)
    pairs = [("PGUSER", user), ("PGPASSWORD", secret.reveal())]
    pairs += [(f"{prefix}_USER", user), (f"{prefix}_PASSWORD", secret.reveal())]
    if creds.alternate is not None:
        alt_user, alt_secret = creds.alternate
        pairs += [(f"{prefix}_ALT_USER", alt_user), (f"{prefix}_ALT_PASSWORD", alt_secret.reveal())]
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in pairs)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _pgpass(creds: Credentials, family: str, context: str, target: Target) -> str:
    host = _pgpass_field(target.host) if target.host else "*"
    port = str(target.port) if target.port else "*"
    dbname = _pgpass_field(target.dbname) if target.dbname else "*"
    return "".join(
        f"{host}:{port}:{dbname}:{_pgpass_field(user)}:{_pgpass_field(secret.reveal())}\n"
        for user, secret in creds.pairs()
    )


def k8s_name(family: str, context: str) -> str:
    """A stable DNS-1123 name: ``my-app-prod-db-credentials``."""
    raw = f"{family}-{context}-db-credentials".lower().replace("_", "-")
    return re.sub(r"-{2,}", "-", raw).strip("-")[:253].rstrip("-")


def _label(value: str) -> str:
    """A label value: 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63].strip("_.-") or "none"


def _k8s_secret(creds: Credentials, family: str, context: str, target: Target) -> str:
    user, secret = creds.preferred
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": k8s_name(family, context),
            "labels": {
                "app.kubernetes.io/managed-by": "rolekit",
                "rolekit.dev/family": _label(family),
                "rolekit.dev/context": _label(context),
            },
        },
        "type": "Opaque",
        "stringData": {
            K8S_DOCUMENT_KEY: _json(creds, family, context, target),
            "PGUSER": user,
            "PGPASSWORD": secret.reveal(),
        },
    }
    return json.dumps(manifest, indent=2) + "\n"


def _pgbouncer(creds: Credentials, family: str, context: str, target: Target) -> str:
    if target.verifiers is None:
        raise RolekitError("--format pgbouncer needs the verifiers the server stores")

    return "".join(
        f"{_auth_file_field(user)} {_auth_file_field(target.verifiers[user])}\n"
        for user, _secret in creds.pairs()
    )


def _auth_file_field(value: str) -> str:
    return f'"{_auth_file_escaped(value)}"'


def _auth_file_escaped(value: str) -> str:
    return value.replace('"', '""')


def _url(creds: Credentials, family: str, context: str, target: Target) -> str:
    if not target.host:
        raise RolekitError(
            "--format url needs the database host: set DATABASE_URL or sqlalchemy.url, or "
            "pass --host"
        )
    user, secret = creds.preferred
    dbname = quote(target.dbname or "", safe="")
    auth = f"{quote(user, safe='')}:{quote(secret.reveal(), safe='')}"
    if target.host.startswith("/"):  # a Unix socket directory goes in the query string
        port = f"&port={target.port}" if target.port else ""
        return f"postgresql://{auth}@/{dbname}?host={quote(target.host, safe='')}{port}\n"
    host = f"[{target.host}]" if ":" in target.host else target.host
    port = f":{target.port}" if target.port else ""
    return f"postgresql://{auth}@{host}{port}/{dbname}\n"


_RENDERERS: Final[dict[str, Callable[[Credentials, str, str, Target], str]]] = {
    "json": _json,
    "env": _env,
    "pgpass": _pgpass,
    "k8s-secret": _k8s_secret,
    "pgbouncer": _pgbouncer,
    "url": _url,
}
#: the formats, in the order ``--help`` lists them
FORMATS: Final = tuple(_RENDERERS)


# -- redaction: every way a rendering writes a secret --------------------------------

#: what a publish command's output shows instead of a secret
REDACTED: Final = "<redacted>"
#: stands for each secret in the control rendering of :func:`secret_renderings`:
#: every encoder above writes it unchanged
_PLACEHOLDER: Final = "rolekit-placeholder"
#: how the renderers write a value (JSON, nested JSON in ``k8s-secret``, sh,
#: percent-encoding, pgpass, auth_file), and how the tools that read them write it
#: back (JSON without ASCII escapes, a Secret's base64 ``data``).  None adds
#: quotes around every value (those stay outside, as in the placeholder's rendering)
_ENCODERS: Final[tuple[Callable[[str], str], ...]] = (
    lambda v: json.dumps(v)[1:-1],
    lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    shlex.quote,
    lambda v: quote(v, safe=""),
    _pgpass_field,
    _auth_file_escaped,
    lambda v: base64.b64encode(v.encode()).decode(),
)


def _encodings(value: str) -> set[str]:
    """*value* as written by one encoder, or by one inside another (a document in a document)."""
    once = {value} | {encode(value) for encode in _ENCODERS}
    return once | {encode(v) for v in once for encode in _ENCODERS}


def redact(text: str, renderings: frozenset[str]) -> str:
    """*text* with each of *renderings* replaced by :data:`REDACTED`, longest first
    (a quoted rendering holds the bare one)."""
    for rendering in sorted(renderings, key=len, reverse=True):
        text = text.replace(rendering, REDACTED)
    return text


def secret_renderings(
    fmt: str, creds: Credentials, family: str, context: str, target: Target = Target()
) -> frozenset[str] | None:
    """Every way :func:`render` writes a secret of *creds* in *fmt* (the passwords,
    and for ``pgbouncer`` the verifiers), to redact in what a reader of it echoes.

    ``None`` when that cannot be shown complete: a secret holding a line break
    (a tail of output may start inside it), or a rendering redacted with these
    that still differs from the same rendering of placeholders.  The check is
    derived from the renderers themselves, so a new format or encoding cannot
    slip past unnoticed: the caller then shows no output at all.
    """
    secrets = [secret.reveal() for _user, secret in creds.pairs()]
    secrets += list((target.verifiers or {}).values())
    if any(len(secret.splitlines()) != 1 for secret in secrets):
        return None
    renderings = frozenset(e for secret in secrets for e in _encodings(secret) if e)
    stand_in = Secret(_PLACEHOLDER)
    control = Credentials(
        (creds.preferred[0], stand_in),
        (creds.alternate[0], stand_in) if creds.alternate is not None else None,
    )
    control_target = target
    if target.verifiers is not None:
        stand_ins = {user: _PLACEHOLDER for user in target.verifiers}
        control_target = Target(target.host, target.port, target.dbname, stand_ins)
    real = redact(render(fmt, creds, family, context, target), renderings)
    # the same encoders on both sides: a quoted rendering is redacted with its quotes in each
    stand_in_renderings = frozenset(_encodings(_PLACEHOLDER))
    expected = redact(render(fmt, control, family, context, control_target), stand_in_renderings)
    return renderings if real == expected else None
