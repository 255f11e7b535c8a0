"""Every environment variable rolekit reads, in one place.

Each overrides one setting for a run without editing a file: a deploy sets
``ROLEKIT_CONTEXT=prod``, a CI job ``DATABASE_URL``.  The order is always the
same: a command-line option or ``-x`` argument, then the variable, then
``alembic.ini``, then the default.  An empty variable counts as unset (an
unset shell variable expanded in a manifest is empty, not absent).
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Variable(NamedTuple):
    """One environment variable: what it overrides, its default, what it is for."""

    name: str
    #: the setting it stands for (``[rolekit] key``, ``-x arg``, ``--option``)
    overrides: str
    default: str
    help: str

    def get(self) -> str | None:
        """Its value, or ``None`` when unset or empty."""
        return os.environ.get(self.name) or None


DATABASE_URL = Variable(
    "DATABASE_URL",
    "sqlalchemy.url in [alembic]",
    "sqlalchemy.url",
    "the migration user's database URL (percent-encode @ : / in the password)",
)
CONTEXT = Variable(
    "ROLEKIT_CONTEXT",
    "-x context=... / --context",
    "none (commands that need one refuse)",
    "the contexts of a run, e.g. prod; the first picks secrets and login state",
)
DRAIN_TIMEOUT = Variable(
    "ROLEKIT_DRAIN_TIMEOUT",
    "[rolekit] drain_timeout / -x drain_timeout / --drain-timeout",
    "300",
    "seconds a finish waits for the old member to drain, quiet period included",
)
DRAIN_QUIET_PERIOD = Variable(
    "ROLEKIT_DRAIN_QUIET_PERIOD",
    "[rolekit] drain_quiet_period / -x drain_quiet_period / --quiet-period",
    "90",
    "seconds the old member must go unseen everywhere before it is disabled",
)
REPLICAS = Variable(
    "ROLEKIT_REPLICAS",
    "[rolekit] replicas",
    "none",
    "libpq URLs of the streaming standbys to watch, or 'unchecked'",
)
POOLERS = Variable(
    "ROLEKIT_POOLERS",
    "[rolekit] poolers",
    "none",
    "PgBouncer admin console URLs to watch",
)
AGE_IDENTITY_FILE = Variable(
    "ROLEKIT_AGE_IDENTITY_FILE",
    "the identity of an age secrets file",
    "none",
    "path of an age identity file that decrypts *.age secrets files",
)
AGE_IDENTITY = Variable(
    "ROLEKIT_AGE_IDENTITY",
    "the identity of an age secrets file",
    "none",
    "an age identity (AGE-SECRET-KEY-...) itself, e.g. from a CI secret",
)
AGE_RECIPIENTS = Variable(
    "ROLEKIT_AGE_RECIPIENTS",
    "the recipients of an age secrets file rolekit writes",
    "the identities' public keys",
    "extra age recipients (public keys, spaces or commas between) a rewrite keeps",
)
SOPS = Variable(
    "ROLEKIT_SOPS",
    "where the sops executable of a SOPS secrets file is",
    "the rolekit[sops] extra's, else sops on PATH",
    "path of the sops executable that reads and writes *.sops.* secrets files",
)

#: every variable, for the docs and ``rolekit --help``
VARIABLES = (
    DATABASE_URL,
    CONTEXT,
    DRAIN_TIMEOUT,
    DRAIN_QUIET_PERIOD,
    REPLICAS,
    POOLERS,
    AGE_IDENTITY_FILE,
    AGE_IDENTITY,
    AGE_RECIPIENTS,
    SOPS,
)
