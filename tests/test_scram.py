"""Client-side SCRAM verifiers (rolekit.pg.scram): what they make, the server
accepts for a login, and what they judge, libpq and the server agree with."""

from __future__ import annotations

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from rolekit.pg import scram
from rolekit.secrets import generate_password
from rolekit.testing import Cluster


def test_a_verifier_matches_its_password_only() -> None:
    password = generate_password()
    made = scram.verifier(password)
    assert made is not None and made.startswith("SCRAM-SHA-256$4096:")
    assert password not in made
    assert scram.matches(made, password) is True
    assert scram.matches(made, password + "x") is False
    assert scram.verifier(password) != made  # a fresh salt each time


@pytest.mark.parametrize("stored", [None, "", "md5" + "0" * 32, "SCRAM-SHA-256$0:AA==$AA==:AA=="])
def test_what_it_cannot_judge_is_none(stored: str | None) -> None:
    assert scram.matches(stored, "a-password-of-some-length") is None


def test_a_password_saslprep_could_change_is_left_to_libpq() -> None:
    for password in ("pässwörd-0123456789", "tab\there-0123456789", ""):
        assert scram.verifier(password) is None
        assert scram.matches(scram.verifier("x" * 20), password) is None


def test_the_server_and_libpq_agree(cluster: Cluster) -> None:
    """A login works with the verifier rolekit made; rolekit recognises libpq's."""
    password = generate_password()
    conn = cluster.connect()  # autocommit (``with conn`` would open a transaction)
    try:
        cur = conn.cursor()
        cur.execute("CREATE ROLE scram_probe LOGIN")
        made = scram.verifier(password)
        cur.execute(sql.SQL("ALTER ROLE scram_probe PASSWORD %s"), (made,))
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'")
        assert cur.fetchone() == (made,)
        psycopg2.connect(cluster.dsn("scram_probe", password)).close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(cluster.dsn("scram_probe", password + "x")).close()
        theirs = encrypt_password(password, "scram_probe", conn, "scram-sha-256")
        assert scram.matches(theirs, password) is True
        assert scram.matches(theirs, password[:-1]) is False
    finally:
        conn.close()
