"""The suite passes whatever the caller's shell exports.

A developer who exported ``ROLEKIT_DRAIN_QUIET_PERIOD=3``, ``DATABASE_URL``
or ``PGPASSWORD`` for their own project must not change what a test sees:
every test project sets what it needs explicitly.  Only the harness's own
knobs (which servers to test, where their binaries are, how many stateful
steps to take) come from outside.
"""

from __future__ import annotations

import os

import pytest

#: the harness's settings, read from the environment on purpose
HARNESS = frozenset(
    {
        "ROLEKIT_PG_VERSIONS",
        "ROLEKIT_COMPAT_VERSIONS",
        "ROLEKIT_PG_CACHE",
        "ROLEKIT_PG_BINDIR",
        "ROLEKIT_STATEFUL_STEPS",
        "ROLEKIT_STATEFUL_EXAMPLES",
    }
)
#: libpq's environment: a PGPASSWORD or PGSERVICE would let a login succeed
#: that the test meant to fail
_LIBPQ = ("PG", "DATABASE_URL")
#: SOPS's: a developer's SOPS_AGE_KEY_FILE would decrypt what a test meant to
#: fail, or a SOPS_AGE_RECIPIENTS change what a test encrypts to
_SOPS = ("SOPS_",)


def scrubbed(environ: dict[str, str]) -> list[str]:
    """The names removed from *environ* (rolekit's, libpq's and SOPS's, but the harness's)."""
    names = [
        name
        for name in environ
        if (name.startswith("ROLEKIT_") and name not in HARNESS)
        or name.startswith(_LIBPQ)
        or name.startswith(_SOPS)
    ]
    for name in names:
        del environ[name]
    return names


def pytest_configure(config: pytest.Config) -> None:
    # Before any test and before xdist starts its workers (they inherit this).
    scrubbed(os.environ)  # type: ignore[arg-type]
