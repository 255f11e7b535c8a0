"""rolekit.client: applications follow a rotation without a redeploy, on real servers."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from rolekit import client
from rolekit.client import BothMembersFailedError, Credentials, CredentialsProvider
from rolekit.errors import RolekitError
from rolekit.project.state import FamilyState, RotationState
from rolekit.secrets import Secret, SecretsFile
from rolekit.testing import Cluster, Project
from tests.clients.helpers import JERRY, TOM, Workload, session_users, set_state, wait_for

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# helpers


def url(cluster: Cluster) -> str:
    """Where the database is, without credentials: the provider supplies them."""
    return f"postgresql+psycopg2://{cluster.host}:{cluster.port}/postgres"


def where(cluster: Cluster) -> dict[str, Any]:
    return {"host": cluster.host, "port": cluster.port, "dbname": "postgres", "connect_timeout": 10}


def copy_atomically(src: Path, dst: Path) -> None:
    """Put a copy in place the way a config agent would: write aside, then rename."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_workload(engine: sqlalchemy.Engine, threads: int, *, retry: bool = False) -> Workload:
    """An application: *threads* threads querying through one engine, nonstop.

    With *retry* a query whose connection was killed under it
    (``pg_terminate_backend``) is retried once, as SQLAlchemy recommends.
    """

    def query() -> str:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT session_user")).scalar_one())

    def killed(exc: BaseException) -> bool:
        return retry and isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated

    return Workload(query, threads, retry=killed, close=engine.dispose)


@pytest.fixture
def client_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="rolekit.client")
    return caplog


def assert_no_password_leaked(passwords: set[str], *texts: str) -> None:
    for value in passwords:
        for blob in texts:
            assert value not in blob


# ---------------------------------------------------------------------------
# rotations under load


def test_32_threads_follow_two_full_rotations_without_a_failed_query(
    project: Project, client_log: pytest.LogCaptureFixture
) -> None:
    project.upgrade("dev")
    passwords = set(project.passwords.values())
    # The files alembic.ini names; the members come from the FamilyLogin repeatable.
    provider = CredentialsProvider.from_alembic_ini(project.root / "alembic.ini", "my_app", "dev")
    assert provider.current().users == (TOM, JERRY)
    # Default pool_recycle (300 s): connections move because the checkout hook
    # sees the new preference, not because they grow old.
    engine = client.create_engine(
        url(project.cluster), provider, pool_size=8, max_overflow=8, fallback_recycle=1.0
    )
    drains: list[str] = []
    started = time.monotonic()
    with engine_workload(engine, 32) as app:
        assert app.only(TOM)
        for old, new in [(TOM, JERRY), (JERRY, TOM)]:
            # start: a fresh password and both may log in, the new one preferred.
            # The app sees the files before the upgrade applies them: its logins
            # as the new member are refused until then, and it falls back.
            passwords.add(project.set_password(new, "dev"))
            set_state(project, [old, new], incoming=new)
            project.upgrade("dev")
            wait_for(f"all queries on {new}", app.only_as(new))
            # finish: the old member may no longer log in; its sessions drain.
            set_state(project, [new])
            proc = project.upgrade("dev", x={"drain_timeout": "30", "terminate": "true"})
            assert "drain: terminating" not in proc.stderr, proc.stderr
            drains += [line for line in proc.stderr.splitlines() if line.startswith("drain:")]
            assert app.only(new)
            assert session_users(project.cluster).keys() <= {new}
    log.warning(
        "32 threads, %.0fs: %s queries (%s), %d failed; refreshes=%d fallbacks=%d "
        "rejected logins=%d; %s",
        time.monotonic() - started, app.total(), dict(app.counts()), len(app.failures),
        provider.refresh_count, provider.fallback_count, provider.auth_failure_count, drains,
    )  # fmt: skip
    assert app.failures == []
    assert app.counts()[TOM] > 0 and app.counts()[JERRY] > 0
    assert provider.refresh_count >= 4  # two files changed per phase
    assert_no_password_leaked(passwords, client_log.text)


def test_late_credential_source_falls_back_and_recovers(
    project: Project, tmp_path: Path, client_log: pytest.LogCaptureFixture
) -> None:
    project.upgrade("dev")
    passwords = set(project.passwords.values())
    # The application reads its own copies, updated by some slow config agent.
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    app_state, app_secrets = app_dir / "rotation.json", app_dir / "passwords.env"
    project_secrets = project.root / "passwords.env"
    copy_atomically(project.state_path, app_state)
    copy_atomically(project_secrets, app_secrets)
    stale_state, stale_secrets = app_dir / "stale.json", app_dir / "stale.env"
    shutil.copy2(app_state, stale_state)
    shutil.copy2(app_secrets, stale_secrets)

    provider = CredentialsProvider.from_project(
        "my_app", "dev", state_file=app_state, secrets_file=app_secrets, members=(TOM, JERRY)
    )
    # pool_recycle=1: the app makes new connections all the time, so it meets
    # the NOLOGIN member right after finish.
    engine = client.create_engine(
        url(project.cluster), provider, pool_size=8, max_overflow=8, pool_recycle=1,
        fallback_recycle=1.0,
    )  # fmt: skip
    started = time.monotonic()
    with engine_workload(engine, 16, retry=True) as app:
        passwords.add(project.set_password(JERRY, "dev"))
        set_state(project, [TOM, JERRY], incoming=JERRY)
        project.upgrade("dev")
        # The secret store learns the new password, the state copy stays stale:
        # the app keeps using tom, so finish has to end tom's sessions.
        copy_atomically(project_secrets, app_secrets)
        set_state(project, [JERRY])
        proc = project.upgrade("dev", x={"drain_timeout": "2", "terminate": "true"})
        assert "drain: terminating" in proc.stderr
        assert provider.current().preferred[0] == TOM  # still stale
        # tom is refused now: new connections fall back to jerry.
        wait_for("all queries on jerry", app.only_as(JERRY))
        fallbacks = provider.fallback_count
        assert fallbacks > 0
        # The state copy catches up: no more fallbacks.
        copy_atomically(project.state_path, app_state)
        assert provider.current().preferred[0] == JERRY
        time.sleep(0.5)
        settled = provider.fallback_count
        assert app.only(JERRY, seconds=1.5)
        assert provider.fallback_count == settled
    log.warning(
        "late source, %.0fs: %s queries (%s), %d failed, %d retried after terminate; "
        "fallbacks=%d (then %d after the update) rejected logins=%d refreshes=%d",
        time.monotonic() - started, app.total(), dict(app.counts()), len(app.failures),
        app.retried, fallbacks, provider.fallback_count - settled, provider.auth_failure_count,
        provider.refresh_count,
    )  # fmt: skip
    assert app.failures == []

    # A copy that knows neither valid login fails clearly, then recovers
    # once it is updated -- without a new provider.
    stale = CredentialsProvider.from_project(
        "my_app", "dev", state_file=stale_state, secrets_file=stale_secrets, members=(TOM, JERRY)
    )
    with pytest.raises(BothMembersFailedError) as info:
        client.connect(stale, **where(project.cluster))
    assert info.value.failures == (
        (TOM, "not permitted to log in"),
        (JERRY, "password rejected"),
    )
    copy_atomically(project.state_path, stale_state)
    copy_atomically(project_secrets, stale_secrets)
    with client.connect(stale, **where(project.cluster)) as conn, conn.cursor() as cur:
        cur.execute("SELECT session_user")
        assert cur.fetchone() == (JERRY,)
    conn.close()
    assert_no_password_leaked(passwords, client_log.text, str(info.value), repr(info.value))


def test_thundering_herd_refreshes_once_per_change(project: Project) -> None:
    project.upgrade("dev")
    cluster = project.cluster
    tom, jerry = project.passwords[f"{TOM}.dev"], project.passwords[f"{JERRY}.dev"]
    source = [Credentials.of(TOM, "stale-" + tom, JERRY, jerry)]
    fetches = 0

    def fetch() -> Credentials:  # a slow vault
        nonlocal fetches
        fetches += 1
        time.sleep(0.2)
        return source[0]

    provider = CredentialsProvider(fetch, description="a test vault")
    provider.current()
    rejected_before = 0

    def herd() -> Counter[str]:
        barrier = threading.Barrier(50)
        users: Counter[str] = Counter()
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker() -> None:
            try:
                barrier.wait()
                conn = client.connect(provider, **where(cluster))
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT session_user")
                        (user,) = cur.fetchone()
                finally:
                    conn.close()
                with lock:
                    users[user] += 1
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        return users

    # change 1: the vault gets tom's real password after the app cached a stale one
    source[0] = Credentials.of(TOM, tom, JERRY, jerry)
    assert herd() == {TOM: 50}
    herd_1 = provider.auth_failure_count - rejected_before
    assert herd_1 > 1  # a real herd hit the failure...
    assert provider.refresh_count == 1  # ...and the source was read once
    assert fetches == 2

    # change 2: tom's password is rotated in the server and the vault
    new_tom = "rotated-" + tom
    cluster.set_password(TOM, new_tom)
    source[0] = Credentials.of(TOM, new_tom, JERRY, jerry)
    rejected_before = provider.auth_failure_count
    assert herd() == {TOM: 50}
    herd_2 = provider.auth_failure_count - rejected_before
    assert herd_2 > 1
    assert provider.refresh_count == 2
    assert fetches == 3
    log.warning("herd: rejected logins %d then %d; refreshes %d", herd_1, herd_2, fetches - 1)


def test_non_auth_errors_propagate_without_retry_or_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = CredentialsProvider(
        lambda: Credentials.of(TOM, "pw-tom-123456", JERRY, "pw-jerry-1")
    )
    provider.current()
    calls: list[str] = []
    real_connect = psycopg2.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["user"])
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "connect", counting_connect)
    port = closed_port()
    with pytest.raises(psycopg2.OperationalError, match="Connection refused") as info:
        client.connect(provider, host="127.0.0.1", port=port, dbname="postgres")
    assert type(info.value) is psycopg2.OperationalError
    assert info.value.__context__ is None
    assert calls == [TOM]
    assert (provider.refresh_count, provider.auth_failure_count) == (0, 0)

    engine = client.create_engine(f"postgresql://127.0.0.1:{port}/postgres", provider)
    with pytest.raises(sa_exc.OperationalError, match="Connection refused") as sa_info:
        engine.connect()
    assert isinstance(sa_info.value.orig, psycopg2.OperationalError)
    assert calls == [TOM, TOM]
    assert (provider.refresh_count, provider.auth_failure_count) == (0, 0)
    engine.dispose()


def test_both_members_failed_names_users_and_hides_passwords(project: Project) -> None:
    project.upgrade("dev")
    env = {
        "MY_APP_USER": TOM,
        "MY_APP_PASSWORD": "wrong-tom-Zq81xx",
        "MY_APP_ALT_USER": JERRY,
        "MY_APP_ALT_PASSWORD": "wrong-jerry-Pw73yy",
    }
    provider = CredentialsProvider.from_env("MY_APP", environ=env)
    with pytest.raises(BothMembersFailedError) as info:
        client.connect(provider, **where(project.cluster))
    error = info.value
    assert isinstance(error, RolekitError)
    for shown in (str(error), repr(error)):
        assert TOM in shown and JERRY in shown
        assert "wrong-tom" not in shown and "wrong-jerry" not in shown
        assert project.passwords[f"{TOM}.dev"] not in shown
    assert "environment variables MY_APP_*" in str(error)
    assert error.users == (TOM, JERRY)
    assert error.__cause__ is None and error.__suppress_context__
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert provider.refresh_count == 1

    # The same through SQLAlchemy; then the environment is fixed: no new provider.
    engine = client.create_engine(url(project.cluster), provider)
    with pytest.raises(BothMembersFailedError):
        engine.connect()
    env["MY_APP_PASSWORD"] = project.passwords[f"{TOM}.dev"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT session_user")).scalar_one() == TOM
    engine.dispose()


# ---------------------------------------------------------------------------
# without a server


def test_credentials_never_show_passwords() -> None:
    creds = Credentials.of(TOM, "hunter2-hunter2", JERRY, Secret("swordfish-1"))
    shown = f"{creds!r} {creds} {creds.preferred} {creds.pairs()}"
    assert "hunter2" not in shown and "swordfish" not in shown
    assert creds.users == (TOM, JERRY)
    with pytest.raises(TypeError) as info:
        Credentials((TOM, "plain-password-9"))  # type: ignore[arg-type]
    assert "plain-password-9" not in str(info.value)
    with pytest.raises(ValueError, match="alternate user is the preferred"):
        Credentials.of(TOM, "a", TOM, "b")
    with pytest.raises(ValueError, match="both"):
        Credentials.of(TOM, "a", JERRY)


def test_from_env_reads_and_validates_variables() -> None:
    env = {"APP_USER": TOM, "APP_PASSWORD": "p1"}
    provider = CredentialsProvider.from_env("APP", environ=env)
    assert provider.current().users == (TOM,)
    env.update(APP_ALT_USER=JERRY, APP_ALT_PASSWORD="p2")
    assert provider.refresh().users == (TOM, JERRY)
    with pytest.raises(RolekitError, match="APP_PASSWORD is not set"):
        CredentialsProvider.from_env("APP", environ={"APP_USER": TOM})
    with pytest.raises(RolekitError, match="set both APP_ALT_USER and APP_ALT_PASSWORD"):
        CredentialsProvider.from_env("APP", environ={**env, "APP_ALT_PASSWORD": ""})
    with pytest.raises(ValueError):
        CredentialsProvider.from_env("1-bad")


def test_project_files_are_reread_when_they_change(tmp_path: Path) -> None:
    state = RotationState(tmp_path / "rotation.json")
    state.set("my_app", "dev", FamilyState((TOM,)))
    state.save()
    secrets = SecretsFile(tmp_path / "passwords.env")
    secrets.set(TOM, "dev", "tom-password-1")
    secrets.set(JERRY, "dev", "jerry-password-1")
    provider = CredentialsProvider.from_project(
        "my_app", "dev", state_file=state.path, secrets_file=secrets.path
    )  # members come from the state file: only tom is named there
    assert provider.current().users == (TOM,)
    state.set("my_app", "dev", FamilyState((TOM, JERRY), incoming=JERRY))
    state.save()
    creds = provider.current()
    assert creds.preferred == (JERRY, Secret("jerry-password-1"))
    assert creds.alternate == (TOM, Secret("tom-password-1"))
    assert provider.refresh_count == 1
    assert provider.current() is creds  # unchanged files: no re-read
    assert provider.refresh_count == 1
    # A broken file keeps the last good credentials (and is not re-read in a loop).
    state.path.write_text("{")
    assert provider.current() is creds
    assert provider.current() is creds
    assert provider.refresh_count == 2
    with pytest.raises(RolekitError, match="cannot read rotation state"):
        provider.refresh()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('connection to server at "h", port 1 failed: FATAL:  password authentication failed '
         'for user "my_app_tom"\n', "password rejected"),
        ('... failed: FATAL:  role "my_app_tom" is not permitted to log in\n',
         "not permitted to log in"),
        ('... failed: FATAL:  role "gh""ost" does not exist\n', "role does not exist"),
        ('... failed: FATAL:  database "nodb" does not exist\n', None),
        ("... failed: Connection refused\n\tIs the server running on that host", None),
        ("... failed: timeout expired\n", None),
        ('connection to server at "127.0.0.1", port 6432 failed: FATAL:  SASL authentication '
         "failed\n", "rejected by the pooler"),  # PgBouncer
        ('... failed: FATAL:  pg_hba.conf rejects connection for host "127.0.0.1", user "u", '
         'database "d", no encryption\n', "refused by pg_hba.conf"),
        ('... failed: FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "u", database "d"\n',
         "refused by pg_hba.conf"),
    ],
)  # fmt: skip
def test_auth_failure_reason(message: str, reason: str | None) -> None:
    assert client.auth_failure_reason(psycopg2.OperationalError(message)) == reason
    assert client.auth_failure_reason(psycopg2.ProgrammingError(message)) is None


def test_auth_failure_reason_of_asyncpg_and_psycopg() -> None:
    """The async drivers' classes: SQLSTATEs where given, PgBouncer's 08P01 by message."""
    import asyncpg
    import psycopg

    rejected = asyncpg.exceptions.InvalidPasswordError('password authentication failed for "x"')
    assert client.auth_failure_reason(rejected) == "rejected, SQLSTATE 28P01"
    pooler = asyncpg.exceptions.ProtocolViolationError("SASL authentication failed")
    assert client.auth_failure_reason(pooler) == "rejected by the pooler"
    other = asyncpg.exceptions.ProtocolViolationError("unexpected message")
    assert client.auth_failure_reason(other) is None
    refused = psycopg.OperationalError("connection failed: Connection refused")
    assert client.auth_failure_reason(refused) is None
    assert client.auth_failure_reason(ConnectionRefusedError(111, "refused")) is None


def test_engine_url_must_not_carry_credentials() -> None:
    provider = CredentialsProvider(lambda: Credentials.of(TOM, "x"))
    with pytest.raises(ValueError, match="must not carry"):
        client.create_engine("postgresql://tom:secret@db/app", provider)
    with pytest.raises(ValueError, match="supports psycopg2, psycopg here"):
        client.create_engine("postgresql+asyncpg://db/app", provider)
    with pytest.raises(ValueError, match="supports asyncpg, psycopg, psycopg_async here"):
        client.create_async_engine("postgresql+psycopg2://db/app", provider)
    assert client.create_engine("postgresql+psycopg://db/app", provider).dialect.driver == "psycopg"
    engine = client.create_engine("postgresql://db/app", provider)
    assert engine.dialect.driver == "psycopg2"
    client.attach(engine, provider)  # idempotent
    with pytest.raises(ValueError, match="already attached"):
        client.attach(engine, CredentialsProvider(lambda: Credentials.of(TOM, "x")))
    with pytest.raises(TypeError, match="takes no 'password'"):
        client.connect(provider, password="x")
