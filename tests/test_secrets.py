"""Tests of :mod:`rolekit.secrets`: reading, validating and writing passwords.

Every error test also checks that the message names the file, key and
context and does *not* carry the password, since leaking it in a log or a CI
transcript is the failure this module exists to avoid.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import multiprocessing
import os
import pickle
import shutil
import stat
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
from dotenv.parser import parse_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrage import x25519

from rolekit import secrets as rs
from rolekit.errors import (
    ContextExpressionError,
    RoleNameError,
    SecretsError,
)
from rolekit.secrets import (
    DEFAULT_MIN_LENGTH,
    Secret,
    SecretsFile,
    SecretsFileWarning,
    check_strength,
    fingerprint,
    generate_password,
    secret_key,
)
from rolekit.secrets._dotenv import Errors, edit

PASSWORD = "Tr0ub4dor-and-3-horses-battery"
OTHER = "c0rrect_h0rse_battery_staple_42"

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
needs_age = pytest.mark.skipif(
    AGE is None or AGE_KEYGEN is None,
    reason="the age CLI is not installed (apt-get install age)",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without age settings from the developer's shell."""
    for name in (rs.AGE_IDENTITY_FILE_ENV, rs.AGE_IDENTITY_ENV, rs.AGE_RECIPIENTS_ENV):
        monkeypatch.delenv(name, raising=False)


def write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    """Write a secrets file with private permissions (no warning)."""
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)
    return path


def error_of(call: object, *args: object) -> str:
    """Return the message of the SecretsError ``call(*args)`` raises."""
    assert callable(call)
    with pytest.raises(SecretsError) as info:
        call(*args)
    return str(info.value)


def assert_names(message: str, *parts: str, hidden: tuple[str, ...] = ()) -> None:
    """Assert ``message`` names every part and hides every secret."""
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    for secret in (PASSWORD, OTHER, *hidden):
        assert secret not in message, f"a secret leaked into {message!r}"


# ---------------------------------------------------------------------------
# keys and Secret


def test_secret_key_mirrors_liquibase_and_lowercases_context() -> None:
    assert secret_key("my_app_tom", "dev") == "my_app_tom.password.dev"
    assert secret_key("my_app_tom", "PROD") == "my_app_tom.password.prod"
    assert secret_key("App.Role", "qa-1") == "App.Role.password.qa-1"


@pytest.mark.parametrize("role", ["", "a b", "a=b", "a#b", "a'b", 'a"b', "a\\b"])
def test_secret_key_refuses_bad_role(role: str) -> None:
    with pytest.raises(RoleNameError):
        secret_key(role, "dev")


@pytest.mark.parametrize("context", ["", "d ev", "a.b", "a=b", "a#b"])
def test_secret_key_refuses_bad_context(context: str) -> None:
    with pytest.raises(ContextExpressionError):
        secret_key("tom", context)


def test_secret_hides_itself() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == str(secret) == f"{secret}" == f"{secret:>40}" == "<secret>"
    assert PASSWORD not in repr([secret, {"k": secret}])
    assert secret.reveal() == PASSWORD


def test_secret_equality_is_by_value() -> None:
    assert Secret(PASSWORD) == Secret(PASSWORD)
    assert Secret(PASSWORD) != Secret(OTHER)
    assert Secret(PASSWORD) != PASSWORD  # no accidental str comparisons
    assert hash(Secret(PASSWORD)) == hash(Secret(PASSWORD))
    assert len({Secret(PASSWORD), Secret(PASSWORD), Secret(OTHER)}) == 2


def test_secret_cannot_be_pickled_but_can_be_copied() -> None:
    secret = Secret(PASSWORD)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError) as info:
            pickle.dumps(secret, protocol=protocol)
        assert PASSWORD not in str(info.value)
    assert copy.copy(secret) is secret
    assert copy.deepcopy([secret])[0] == secret


def test_secret_wraps_only_str() -> None:
    with pytest.raises(TypeError) as info:
        Secret(PASSWORD.encode())  # type: ignore[arg-type]
    assert PASSWORD not in str(info.value)


# ---------------------------------------------------------------------------
# reading


def test_load_get_has(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwords.env",
        "# rolekit passwords\n"
        f"my_app_tom.password.dev={PASSWORD}\n"
        "\n"
        f"my_app_jerry.password.dev='{OTHER}'  # inline comment\n"
        'my_app_tom.password.prod="with space and $HOME"\n'
        "my_app_tom.password.test=\n",
    )
    secrets = SecretsFile(path)
    loaded = secrets.load()
    assert set(loaded) == {
        "my_app_tom.password.dev",
        "my_app_jerry.password.dev",
        "my_app_tom.password.prod",
    }
    assert all(isinstance(value, Secret) for value in loaded.values())
    assert secrets.get("my_app_tom", "dev").reveal() == PASSWORD
    assert secrets.get("my_app_tom", "DEV").reveal() == PASSWORD
    assert secrets.get("my_app_jerry", "dev").reveal() == OTHER
    # no ${VAR} expansion: a password may contain '$'
    assert secrets.get("my_app_tom", "prod").reveal() == "with space and $HOME"
    assert secrets.has("my_app_tom", "dev")
    assert not secrets.has("my_app_tom", "test")  # empty
    assert not secrets.has("my_app_tom", "qa")


def test_missing_file(tmp_path: Path) -> None:
    secrets = SecretsFile(tmp_path / "passwords.env")
    message = error_of(secrets.get, "my_app_tom", "dev")
    assert_names(message, "passwords.env", "does not exist", "my_app_tom.password.dev", "'dev'")
    assert "does not exist" in error_of(secrets.load)
    assert not secrets.has("my_app_tom", "dev")


def test_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", f"my_app_tom.password.dev={PASSWORD}\n")
    message = error_of(SecretsFile(path).get, "my_app_tom", "prod")
    assert_names(message, str(path), "my_app_tom.password.prod", "'prod'", "context(s) dev")


def test_empty_value(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwords.env",
        f"a.password.dev={PASSWORD}\n\n\nmy_app_tom.password.dev=   # todo\n",
    )
    message = error_of(SecretsFile(path).get, "my_app_tom", "dev")
    assert_names(message, f"{path}:4", "my_app_tom.password.dev", "'dev'", "empty")


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (f"a.password.dev={PASSWORD}\n\n\nb.password.dev='{OTHER}\n", 4),
        (f'a.password.dev={PASSWORD}\nb.password.dev="{OTHER}\n', 2),
        (f"a.password.dev={PASSWORD}\n{OTHER}\n", 2),  # password pasted alone
        (f"\n\n   {OTHER}   \na.password.dev={PASSWORD}\n", 3),
        (f"a.password.dev={PASSWORD}\n= {OTHER}\n", 2),
    ],
)
def test_malformed_line(tmp_path: Path, content: str, line: int) -> None:
    path = write(tmp_path / "passwords.env", content)
    message = error_of(SecretsFile(path).get, "a", "dev")
    assert_names(message, f"{path}:{line}", "malformed", "a.password.dev", "'dev'")
    # a whole load names the file and line too
    assert_names(error_of(SecretsFile(path).load), f"{path}:{line}")


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwords.env",
        f"my_app_tom.password.dev={PASSWORD}\n"
        "other.password.dev=xxxxxxxxxxxxxxxxxxxx\n"
        f"my_app_tom.password.dev={OTHER}\n",
    )
    message = error_of(SecretsFile(path).get, "other", "dev")
    assert_names(
        message,
        str(path),
        "duplicate",
        "my_app_tom.password.dev",
        "(context 'dev')",
        "lines 1 and 3",
    )


def test_crlf_and_bom(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwords.env",
        b"\xef\xbb\xbfmy_app_tom.password.dev="
        + PASSWORD.encode()
        + b"\r\n# comment\r\n"
        + b"my_app_tom.password.prod='"
        + OTHER.encode()
        + b"'\r\n"
        + b'my_app_tom.password.test="quoted value"   \r\n'
        + b"my_app_tom.password.qa=last-no-newline",
    )
    loaded = SecretsFile(path).load()
    assert list(loaded) == [
        "my_app_tom.password.dev",  # no BOM in the first key
        "my_app_tom.password.prod",
        "my_app_tom.password.test",
        "my_app_tom.password.qa",
    ]
    assert loaded["my_app_tom.password.dev"].reveal() == PASSWORD  # no \r
    assert loaded["my_app_tom.password.prod"].reveal() == OTHER
    assert loaded["my_app_tom.password.test"].reveal() == "quoted value"
    assert loaded["my_app_tom.password.qa"].reveal() == "last-no-newline"


def test_crlf_error_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", "a.password.dev=x\r\n\r\n'oops\r\n")
    assert f"{path}:3" in error_of(SecretsFile(path).load)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"a.password.dev=" + PASSWORD.encode() + b"\nb.password.dev=x\x00y\n", "NUL"),
        (b"a.password.dev=" + PASSWORD.encode() + b"\n\x01\x02\x03\n", "control"),
        (b"a.password.dev=" + PASSWORD.encode() + b"\n\xff\xfe\x80abc\n", "UTF-8"),
    ],
)
def test_binary_junk(tmp_path: Path, data: bytes, what: str) -> None:
    path = write(tmp_path / "passwords.env", data)
    message = error_of(SecretsFile(path).get, "a", "dev")
    assert_names(message, f"{path}:2", what, "binary", "a.password.dev", "'dev'")


@pytest.mark.parametrize(
    "value",
    [
        '"first-half\\nsecond-half"',  # python-dotenv decodes \n in double quotes
        '"first-half\\rsecond-half"',
        '"first-half\\vsecond-half"',
        "'first-half\nsecond-half'",  # a quoted value over two lines
        '"first-half\nsecond-half"',
    ],
)
def test_a_decoded_line_break_is_refused_at_load(tmp_path: Path, value: str) -> None:
    """A password with a line break would make two pgpass lines (issue 23, finding 6):
    refused when read, naming the key and line, never the value."""
    content = f"b.password.dev={PASSWORD}\na.password.dev={value}\n"
    path = write(tmp_path / "passwords.env", content)
    hidden = ("first-half", "second-half")
    message = error_of(SecretsFile(path).get, "b", "dev")
    assert_names(message, f"{path}:2", "a.password.dev", "line break", hidden=hidden)
    assert_names(error_of(SecretsFile(path).load), f"{path}:2", "a.password.dev", hidden=hidden)


def test_random_binary_file(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", os.urandom(4096))
    assert_names(error_of(SecretsFile(path).load), str(path), "binary")


def test_ten_megabyte_line(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", b"a.password.dev=" + b"x" * 10_000_000)
    message = error_of(SecretsFile(path).get, "a", "dev")
    assert_names(message, str(path), "larger than 1024 KiB", "a.password.dev", "'dev'")


def test_huge_sparse_file_fails_without_reading(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", b"")
    os.truncate(path, 1 << 40)  # 1 TiB, sparse: reading it would take ages
    started = time.monotonic()
    assert "larger than" in error_of(SecretsFile(path).load)
    assert time.monotonic() - started < 5


def test_long_line_in_small_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwords.env",
        f"a.password.dev={PASSWORD}\n#\nb.password.dev={'y' * 70_000}\n",
    )
    message = error_of(SecretsFile(path).get, "a", "dev")
    assert_names(message, f"{path}:3", "64 KiB", "a.password.dev", "'dev'")


def test_symlink_is_refused(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere.env", f"a.password.dev={PASSWORD}\n")
    link = tmp_path / "passwords.env"
    link.symlink_to(target)
    secrets = SecretsFile(link)
    assert_names(error_of(secrets.get, "a", "dev"), str(link), "symlink", "'dev'")
    assert "symlink" in error_of(secrets.has, "a", "dev")
    assert "symlink" in error_of(secrets.set, "a", "dev", OTHER)
    assert target.read_text() == f"a.password.dev={PASSWORD}\n"  # untouched


def test_symlink_swapped_in_after_caching(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", f"a.password.dev={PASSWORD}\n")
    secrets = SecretsFile(path)
    assert secrets.has("a", "dev")
    target = write(tmp_path / "elsewhere.env", f"a.password.dev={OTHER}\n")
    path.unlink()
    path.symlink_to(target)
    assert "symlink" in error_of(secrets.load)


def test_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "passwords.env").mkdir()
    assert "not a regular file" in error_of(SecretsFile(tmp_path / "passwords.env").load)
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)
    assert "not a regular file" in error_of(SecretsFile(fifo).load)  # no hang


def test_cache_follows_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "passwords.env", f"a.password.dev={PASSWORD}\n")
    secrets = SecretsFile(path)
    reads = 0
    real_read = SecretsFile._read

    def counting_read(self: SecretsFile, err: Errors) -> object:
        nonlocal reads
        reads += 1
        return real_read(self, err)

    monkeypatch.setattr(SecretsFile, "_read", counting_read)
    for _ in range(5):
        assert secrets.get("a", "dev").reveal() == PASSWORD
    assert reads == 1
    # another process replaces the file with one of the same size
    replacement = write(tmp_path / "new.env", f"a.password.dev={OTHER[: len(PASSWORD)]}\n")
    os.replace(replacement, path)
    assert secrets.get("a", "dev").reveal() == OTHER[: len(PASSWORD)]
    assert reads == 2
    loaded = secrets.load()
    loaded.clear()  # callers get a copy, not the cache
    assert secrets.has("a", "dev")


def test_repo_root_resolves_relative_paths(tmp_path: Path) -> None:
    write(tmp_path / "passwords.env", f"a.password.dev={PASSWORD}\n")
    secrets = SecretsFile(Path("passwords.env"), repo_root=tmp_path)
    assert secrets.path == tmp_path / "passwords.env"
    assert secrets.get("a", "dev").reveal() == PASSWORD


# ---------------------------------------------------------------------------
# file hygiene


def test_group_readable_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "passwords.env", f"a.password.dev={PASSWORD}\n", 0o640)
    with (
        caplog.at_level(logging.WARNING, logger="rolekit.secrets"),
        pytest.warns(SecretsFileWarning, match="chmod 600") as record,
    ):
        SecretsFile(path).load()
    assert record[0].filename == __file__  # attributed to the caller
    assert any(
        r.name.startswith("rolekit.secrets") and "readable by group or others" in r.getMessage()
        for r in caplog.records
    )
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_private_file_does_not_warn(tmp_path: Path) -> None:
    import warnings

    path = write(tmp_path / "passwords.env", f"a.password.dev={PASSWORD}\n", 0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SecretsFile(path).load()


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_tracked_plaintext_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "conf").mkdir(parents=True)
    git(repo, "init", "-q")
    path = write(repo / "conf" / "passwords.env", f"a.password.dev={PASSWORD}\n")
    secrets = SecretsFile(path)
    assert secrets.get("a", "dev").reveal() == PASSWORD  # untracked: fine
    git(repo, "add", "conf/passwords.env")  # staged is enough to leak it
    os.utime(path, ns=(1, 1))  # invalidate the cache
    message = error_of(secrets.get, "a", "dev")
    assert_names(
        message,
        str(path),
        "tracked by git",
        "git rm --cached passwords.env",
        ".gitignore",
        "a.password.dev",
        "'dev'",
    )
    assert "tracked by git" in error_of(secrets.set, "a", "dev", OTHER)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_tracked_age_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = x25519.Identity.generate()
    monkeypatch.setenv(rs.AGE_IDENTITY_ENV, str(identity))
    git(tmp_path, "init", "-q")
    path = tmp_path / "passwords.env.age"
    SecretsFile(path).set("a", "dev", PASSWORD)
    git(tmp_path, "add", path.name)
    assert SecretsFile(path).get("a", "dev").reveal() == PASSWORD


def test_no_git_or_no_repo_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "passwords.env", f"a.password.dev={PASSWORD}\n")
    assert SecretsFile(path).get("a", "dev").reveal() == PASSWORD  # not a repo
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert SecretsFile(path).get("a", "dev").reveal() == PASSWORD  # no git


# ---------------------------------------------------------------------------
# writing


def test_set_preserves_comments_and_other_keys(tmp_path: Path) -> None:
    original = (
        "# rolekit passwords -- never commit\n"
        "\n"
        "my_app_tom.password.dev=old-password-value\n"
        "  # indented comment\n"
        f"my_app_jerry.password.dev='{OTHER}'   # jerry\n"
        "UNRELATED=keep me\n"
        "my_app_tom.password.test=\n"
    )
    path = write(tmp_path / "passwords.env", original, 0o644)
    secrets = SecretsFile(path)
    with pytest.warns(SecretsFileWarning):
        secrets.set("my_app_tom", "dev", PASSWORD)
    secrets.set("my_app_tom", "test", "t" * 20)
    secrets.set("my_app_tom", "PROD", "p" * 20)
    assert path.read_text() == (
        "# rolekit passwords -- never commit\n"
        "\n"
        f"my_app_tom.password.dev={PASSWORD}\n"
        "  # indented comment\n"
        f"my_app_jerry.password.dev='{OTHER}'   # jerry\n"
        "UNRELATED=keep me\n"
        f"my_app_tom.password.test={'t' * 20}\n"
        f"my_app_tom.password.prod={'p' * 20}\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.get("my_app_tom", "dev").reveal() == PASSWORD
    assert secrets.get("my_app_jerry", "dev").reveal() == OTHER
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "passwords.env",
        "passwords.env.lock",
    ]  # no temporary file left behind


def test_set_creates_private_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords.env"
    SecretsFile(path).set("a", "dev", PASSWORD)
    assert path.read_text() == f"a.password.dev={PASSWORD}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_set_keeps_crlf_bom_and_missing_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", b"\xef\xbb\xbf# c\r\na.password.dev=old\r\nb=1")
    secrets = SecretsFile(path)
    secrets.set("a", "dev", PASSWORD)
    secrets.set("c", "dev", OTHER)
    assert path.read_bytes() == (
        b"\xef\xbb\xbf# c\r\n"
        + f"a.password.dev={PASSWORD}\r\nb=1\r\nc.password.dev={OTHER}\r\n".encode()
    )


def test_set_quotes_awkward_values(tmp_path: Path) -> None:
    path = tmp_path / "passwords.env"
    secrets = SecretsFile(path)
    awkward = " it's a \\'test' #1 ${HOME} \"x\" "
    secrets.set("a", "dev", awkward)
    assert secrets.get("a", "dev").reveal() == awkward


@pytest.mark.parametrize("value", ["", "two\nlines", "cr\rhere", "nul\x00"])
def test_set_refuses_unstorable_values(tmp_path: Path, value: str) -> None:
    path = tmp_path / "passwords.env"
    message = error_of(SecretsFile(path).set, "a", "dev", value)
    assert_names(message, "a.password.dev", "'dev'")
    assert not path.exists()


def test_set_refuses_a_broken_file(tmp_path: Path) -> None:
    content = f"a.password.dev={PASSWORD}\na.password.dev={OTHER}\n"
    path = write(tmp_path / "passwords.env", content)
    assert "duplicate" in error_of(SecretsFile(path).set, "b", "dev", "x" * 20)
    assert path.read_text() == content


def test_set_logs_no_plaintext(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="rolekit.secrets"):
        SecretsFile(tmp_path / "passwords.env").set("a", "dev", PASSWORD)
    assert caplog.records
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


_VALUE_CHARS = st.characters(
    exclude_categories=["Cs"],
    exclude_characters="\r\n\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e"
    "\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f",
)


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(_VALUE_CHARS, min_size=1, max_size=60),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_edit_round_trips_any_value(value: str, newline: str) -> None:
    text = newline.join(["# head", "x.password.dev=keep-me", "a.password.dev=old", "# tail", ""])
    edited = edit(text, "a.password.dev", value)
    values = {b.key: b.value for b in parse_stream(io.StringIO(edited)) if b.key}
    assert values == {"x.password.dev": "keep-me", "a.password.dev": value}
    assert edited.startswith(f"# head{newline}x.password.dev=keep-me{newline}")
    assert edited.endswith(f"{newline}# tail{newline}")


def _writer(path: str, worker: int, count: int) -> None:
    """Child process of the concurrency test: set ``count`` keys."""
    secrets = SecretsFile(Path(path))
    for index in range(count):
        secrets.set(f"role_{worker}_{index}", "dev", generate_password())


def test_concurrent_set_loses_no_key(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", "# shared\n")
    workers, count = 6, 12
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_writer, args=(str(path), worker, count))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    loaded = SecretsFile(path).load()
    assert len(loaded) == workers * count
    assert path.read_text().startswith("# shared\n")


# ---------------------------------------------------------------------------
# age


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> x25519.Identity:
    key = x25519.Identity.generate()
    monkeypatch.setenv(rs.AGE_IDENTITY_ENV, str(key))
    return key


def test_age_round_trip(tmp_path: Path, identity: x25519.Identity) -> None:
    path = tmp_path / "passwords.env.age"
    secrets = SecretsFile(path)
    secrets.set("my_app_tom", "dev", PASSWORD)
    secrets.set("my_app_tom", "prod", OTHER)
    raw = path.read_bytes()
    assert raw.startswith(b"age-encryption.org/v1\n")
    assert PASSWORD.encode() not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (
        pyrage.decrypt(raw, [identity])
        == (f"my_app_tom.password.dev={PASSWORD}\nmy_app_tom.password.prod={OTHER}\n").encode()
    )
    assert SecretsFile(path).get("my_app_tom", "prod").reveal() == OTHER


def test_age_validates_the_plaintext(tmp_path: Path, identity: x25519.Identity) -> None:
    path = tmp_path / "passwords.env.age"
    path.write_bytes(
        pyrage.encrypt(
            f"a.password.dev={PASSWORD}\na.password.dev={OTHER}\n".encode(),
            [identity.to_public()],
        )
    )
    assert_names(error_of(SecretsFile(path).get, "a", "dev"), str(path), "duplicate")


def test_age_wrong_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    right, wrong = x25519.Identity.generate(), x25519.Identity.generate()
    path = tmp_path / "passwords.env.age"
    path.write_bytes(pyrage.encrypt(f"a.password.dev={PASSWORD}\n".encode(), [right.to_public()]))
    monkeypatch.setenv(rs.AGE_IDENTITY_ENV, str(wrong))
    message = error_of(SecretsFile(path).get, "a", "dev")
    assert_names(
        message,
        str(path),
        "cannot decrypt",
        "ROLEKIT_AGE_IDENTITY",
        "a.password.dev",
        "'dev'",
        hidden=(str(wrong), str(right)),
    )
    assert "AGE-SECRET-KEY" not in message


def test_age_damaged_file(tmp_path: Path, identity: x25519.Identity) -> None:
    path = write(tmp_path / "passwords.env.age", b"age-encryption.org/v1\n-> junk\n")
    message = error_of(SecretsFile(path).load)
    assert_names(message, str(path), "not a valid age file", hidden=(str(identity),))


def test_age_missing_identity(tmp_path: Path) -> None:
    path = tmp_path / "passwords.env.age"
    key = x25519.Identity.generate()
    path.write_bytes(pyrage.encrypt(b"a.password.dev=x\n", [key.to_public()]))
    message = error_of(SecretsFile(path).get, "a", "dev")
    assert_names(
        message,
        str(path),
        "no identity",
        "ROLEKIT_AGE_IDENTITY_FILE",
        "a.password.dev",
        "'dev'",
    )


def test_age_bad_inline_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "passwords.env.age"
    path.write_bytes(b"age-encryption.org/v1\n")
    bogus = "AGE-SECRET-KEY-1NOTAVALIDKEYATALL"
    monkeypatch.setenv(rs.AGE_IDENTITY_ENV, bogus)
    message = error_of(SecretsFile(path).load)
    assert_names(message, "ROLEKIT_AGE_IDENTITY", hidden=(bogus,))


def test_age_identity_file_with_comments_and_several_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = x25519.Identity.generate(), x25519.Identity.generate()
    key_file = write(
        tmp_path / "keys.txt",
        f"# created: today\n# public key: {first.to_public()}\n{first}\n\n"
        f"  # another one\r\n{second}\n",
    )
    monkeypatch.setenv(rs.AGE_IDENTITY_FILE_ENV, str(key_file))
    path = tmp_path / "passwords.env.age"
    path.write_bytes(pyrage.encrypt(f"a.password.dev={PASSWORD}\n".encode(), [second.to_public()]))
    assert SecretsFile(path).get("a", "dev").reveal() == PASSWORD


def test_age_identity_file_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "passwords.env.age"
    path.write_bytes(b"age-encryption.org/v1\n")
    key_file = tmp_path / "keys.txt"
    monkeypatch.setenv(rs.AGE_IDENTITY_FILE_ENV, str(key_file))
    assert_names(error_of(SecretsFile(path).load), str(key_file), "does not exist")
    real = x25519.Identity.generate()
    write(key_file, f"# comment\n{real}\nAGE-SECRET-KEY-1BROKEN\n")
    message = error_of(SecretsFile(path).load)
    assert_names(message, "line 3", str(key_file), hidden=(str(real),))
    assert "AGE-SECRET-KEY-1BROKEN" not in message
    write(key_file, "# only comments\n")
    assert "holds no identity" in error_of(SecretsFile(path).load)


def test_age_identity_file_readable_by_others_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = x25519.Identity.generate()
    key_file = write(tmp_path / "keys.txt", f"{key}\n", 0o644)
    monkeypatch.setenv(rs.AGE_IDENTITY_FILE_ENV, str(key_file))
    with pytest.warns(SecretsFileWarning, match="keys.txt"):
        SecretsFile(tmp_path / "p.age").set("a", "dev", PASSWORD)


def test_age_set_refuses_to_drop_recipients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = x25519.Identity.generate(), x25519.Identity.generate()
    path = tmp_path / "passwords.env.age"
    path.write_bytes(
        pyrage.encrypt(
            f"a.password.dev={PASSWORD}\n".encode(),
            [mine.to_public(), theirs.to_public()],
        )
    )
    monkeypatch.setenv(rs.AGE_IDENTITY_ENV, str(mine))
    secrets = SecretsFile(path)
    message = error_of(secrets.set, "b", "dev", OTHER)
    assert_names(message, str(path), "2 recipients", "ROLEKIT_AGE_RECIPIENTS")
    monkeypatch.setenv(rs.AGE_RECIPIENTS_ENV, f" {theirs.to_public()} ,")
    secrets.set("b", "dev", OTHER)
    # both can still read it
    for key in (mine, theirs):
        plain = pyrage.decrypt(path.read_bytes(), [key]).decode()
        assert plain == f"a.password.dev={PASSWORD}\nb.password.dev={OTHER}\n"


def test_age_bad_recipient(
    tmp_path: Path, identity: x25519.Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    del identity
    monkeypatch.setenv(rs.AGE_RECIPIENTS_ENV, "age1nope")
    message = error_of(SecretsFile(tmp_path / "p.age").set, "a", "dev", PASSWORD)
    assert_names(message, "ROLEKIT_AGE_RECIPIENTS", "age1nope")


def test_age_new_file_from_recipients_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = x25519.Identity.generate()
    monkeypatch.setenv(rs.AGE_RECIPIENTS_ENV, str(key.to_public()))
    path = tmp_path / "passwords.env.age"
    SecretsFile(path).set("a", "dev", PASSWORD)
    assert pyrage.decrypt(path.read_bytes(), [key]) == f"a.password.dev={PASSWORD}\n".encode()
    # nothing to encrypt to at all
    monkeypatch.delenv(rs.AGE_RECIPIENTS_ENV)
    message = error_of(SecretsFile(tmp_path / "q.age").set, "a", "dev", PASSWORD)
    assert "no recipient" in message


@pytest.fixture
def age_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An identity file made by ``age-keygen`` (with its comment lines)."""
    assert AGE_KEYGEN is not None
    key_file = tmp_path / "key.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(key_file)], check=True, capture_output=True)
    assert key_file.read_text().startswith("# created:")
    monkeypatch.setenv(rs.AGE_IDENTITY_FILE_ENV, str(key_file))
    yield key_file


def _age_public_key(key_file: Path) -> str:
    assert AGE_KEYGEN is not None
    result = subprocess.run(
        [AGE_KEYGEN, "-y", str(key_file)], check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


@needs_age
def test_age_cli_decrypts_what_rolekit_writes(tmp_path: Path, age_key_file: Path) -> None:
    assert AGE is not None
    path = tmp_path / "passwords.env.age"
    SecretsFile(path).set("my_app_tom", "dev", PASSWORD)
    result = subprocess.run(
        [AGE, "-d", "-i", str(age_key_file), str(path)], check=True, capture_output=True
    )
    assert result.stdout == f"my_app_tom.password.dev={PASSWORD}\n".encode()


@needs_age
@pytest.mark.parametrize("armor", [False, True])
def test_rolekit_reads_and_edits_what_age_cli_writes(
    tmp_path: Path, age_key_file: Path, armor: bool
) -> None:
    assert AGE is not None
    path = tmp_path / "passwords.env.age"
    plaintext = f"# team passwords\r\nmy_app_tom.password.dev={PASSWORD}\r\n"
    subprocess.run(
        [AGE, "-r", _age_public_key(age_key_file), *(["-a"] if armor else []), "-o", str(path)],
        input=plaintext.encode(),
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    secrets = SecretsFile(path)
    assert secrets.get("my_app_tom", "dev").reveal() == PASSWORD
    secrets.set("my_app_tom", "prod", OTHER)
    assert path.read_bytes().startswith(
        b"-----BEGIN AGE ENCRYPTED FILE-----" if armor else b"age-encryption.org/v1"
    )
    result = subprocess.run(
        [AGE, "-d", "-i", str(age_key_file), str(path)], check=True, capture_output=True
    )
    assert result.stdout == (plaintext + f"my_app_tom.password.prod={OTHER}\r\n").encode()


@needs_age
def test_age_cli_file_for_two_recipients_keeps_both(
    tmp_path: Path, age_key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert AGE is not None and AGE_KEYGEN is not None
    other_key = tmp_path / "other.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(other_key)], check=True, capture_output=True)
    path = tmp_path / "passwords.env.age"
    subprocess.run(
        [
            AGE,
            "-r",
            _age_public_key(age_key_file),
            "-r",
            _age_public_key(other_key),
            "-o",
            str(path),
        ],
        input=b"a.password.dev=x\n",
        check=True,
        capture_output=True,
    )
    assert "2 recipients" in error_of(SecretsFile(path).set, "a", "dev", PASSWORD)
    monkeypatch.setenv(rs.AGE_RECIPIENTS_ENV, _age_public_key(other_key))
    SecretsFile(path).set("a", "dev", PASSWORD)
    result = subprocess.run(
        [AGE, "-d", "-i", str(other_key), str(path)], check=True, capture_output=True
    )
    assert result.stdout == f"a.password.dev={PASSWORD}\n".encode()


# ---------------------------------------------------------------------------
# generation, strength, fingerprints


def test_generate_password() -> None:
    password = generate_password()
    assert len(password) == 32
    assert len(generate_password(64)) == 64
    assert len(generate_password(1)) == 1
    alphabet = set(string.ascii_letters + string.digits + "-_")
    many = [generate_password() for _ in range(200)]
    assert all(set(p) <= alphabet for p in many)
    assert len(set(many)) == 200
    # every character of the alphabet turns up: it is really used
    assert set("".join(many)) == alphabet
    with pytest.raises(ValueError):
        generate_password(0)


def test_generated_password_needs_no_quoting(tmp_path: Path) -> None:
    path = tmp_path / "passwords.env"
    password = generate_password()
    SecretsFile(path).set("a", "dev", password)
    assert path.read_text() == f"a.password.dev={password}\n"


def test_check_strength() -> None:
    short = "short-pass"
    check_strength("tom", "dev", Secret("x" * DEFAULT_MIN_LENGTH))
    check_strength("tom", "dev", Secret("x" * 8), min_length=8)
    with pytest.raises(SecretsError) as info:
        check_strength("tom", "Prod", Secret(short))
    assert_names(str(info.value), "tom.password.prod", "'prod'", "16", hidden=(short,))
    with pytest.raises(SecretsError) as info:
        check_strength("tom", "dev", Secret(PASSWORD), min_length=64)
    assert_names(str(info.value), "64")
    with pytest.raises(ValueError):
        check_strength("tom", "dev", Secret(PASSWORD), min_length=0)


def test_fingerprint_is_scrypt_and_stable() -> None:
    secret = Secret(PASSWORD)
    salt = b"0123456789abcdef"
    label = "my_app_tom.password.dev"
    value = fingerprint(secret, salt=salt, label=label)
    assert (
        value
        == hashlib.scrypt(
            PASSWORD.encode(), salt=salt + label.encode(), n=2**14, r=8, p=1, dklen=32
        ).hex()
    )
    assert len(value) == 64
    assert fingerprint(Secret(PASSWORD), salt=salt, label=label) == value
    assert fingerprint(Secret(OTHER), salt=salt, label=label) != value
    assert fingerprint(secret, salt=b"fedcba9876543210", label=label) != value
    assert fingerprint(secret, salt=salt, label="my_app_tom.password.prod") != value
    assert PASSWORD not in value
    with pytest.raises(ValueError):
        fingerprint(secret, salt=b"", label=label)


def test_fingerprint_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real_scrypt = hashlib.scrypt

    def counting_scrypt(*args: object, **kwargs: object) -> bytes:
        nonlocal calls
        calls += 1
        return real_scrypt(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting_scrypt)
    salt = os.urandom(16)
    first = fingerprint(Secret(PASSWORD), salt=salt, label="a.password.dev")
    for _ in range(10):
        assert fingerprint(Secret(PASSWORD), salt=salt, label="a.password.dev") == first
    assert calls == 1
    fingerprint(Secret(PASSWORD), salt=salt, label="a.password.test")
    assert calls == 2


# ---------------------------------------------------------------------------
# robustness


def test_plaintext_works_without_pyrage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyrage is the optional extra ``rolekit[age]``: only .age files need it."""
    monkeypatch.setitem(sys.modules, "pyrage", None)  # import now fails
    path = tmp_path / "passwords.env"
    SecretsFile(path).set("a", "dev", PASSWORD)
    assert SecretsFile(path).get("a", "dev").reveal() == PASSWORD
    monkeypatch.setenv(rs.AGE_IDENTITY_ENV, "AGE-SECRET-KEY-1XXXX")
    message = error_of(SecretsFile(tmp_path / "p.age").set, "a", "dev", PASSWORD)
    assert_names(message, "p.age", "pip install 'rolekit[age]'")


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = f"a.password.dev={PASSWORD}\n"
    path = write(tmp_path / "passwords.env", content)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    message = error_of(SecretsFile(path).set, "a", "dev", OTHER)
    assert_names(message, str(path), "No space left on device")
    assert path.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "passwords.env",
        "passwords.env.lock",
    ]


def test_has_raises_on_a_broken_file(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", "a.password.dev=x\na.password.dev=y\n")
    assert_names(error_of(SecretsFile(path).has, "a", "dev"), str(path), "duplicate")


def test_fingerprint_key_makes_fingerprints_keyed_and_fast(tmp_path: Path) -> None:
    path = write(tmp_path / "passwords.env", f"my_app_tom.password.dev={PASSWORD}\n")
    secrets = SecretsFile(path)
    assert secrets.fingerprint_key() is None
    secrets.ensure_fingerprint_key()
    key = secrets.fingerprint_key()
    assert key is not None and len(key) == 32
    secrets.ensure_fingerprint_key()
    assert secrets.fingerprint_key() == key  # created once
    value = secrets.get("my_app_tom", "dev")
    keyed = fingerprint(value, salt=b"s" * 16, label="l", key=key)
    assert keyed.startswith("hmac:") and PASSWORD not in keyed
    assert keyed != fingerprint(value, salt=b"s" * 16, label="l", key=b"k" * 32)
    assert keyed != fingerprint(value, salt=b"s" * 16, label="l")  # the scrypt fallback
