"""``CredentialsProvider.from_file``: a mounted credentials document that changes under it.

Kubernetes Secret volumes, Vault Agent and CSI drivers update the file by
swapping the ``..data`` symlink to a new directory; others write it in
place, and a reader can catch it half written.  The provider follows every
complete version and never trades good credentials for a broken file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from rolekit import client
from rolekit.client import CredentialsProvider
from rolekit.errors import RolekitError
from rolekit.secrets import Secret
from rolekit.testing import Project
from tests.clients.helpers import JERRY, TOM
from tests.guards.helpers import password


def _document(user: str, secret: str, alt: tuple[str, str] | None = None) -> str:
    doc = {"family": "my_app", "context": "dev", "user": user, "password": secret}
    if alt is not None:
        doc["alt_user"], doc["alt_password"] = alt
    return json.dumps(doc)


class SecretVolume:
    """A directory laid out as the kubelet lays out a Secret volume."""

    def __init__(self, root: Path, key: str = "credentials.json") -> None:
        self.root, self.key, self.version = root, key, 0
        (root / key).symlink_to(Path("..data") / key)

    def publish(self, text: str) -> None:
        """Write a new timestamped directory and swap ``..data`` to it atomically."""
        self.version += 1
        new = self.root / f"..2026_12_02_00_00_{self.version:02d}.000000001"
        new.mkdir()
        (new / self.key).write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(new.name)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        os.replace(link, self.root / "..data")
        if old is not None:
            for file in old.iterdir():
                file.unlink()
            old.rmdir()

    @property
    def path(self) -> Path:
        return self.root / self.key


def test_follows_the_kubernetes_symlink_swap(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path)
    volume.publish(_document(TOM, "tom-1"))
    provider = CredentialsProvider.from_file(volume.path)
    assert provider.current().preferred[0] == TOM
    # a rotation's overlap: jerry preferred, tom still there to fall back to
    volume.publish(_document(JERRY, "jerry-1", (TOM, "tom-1")))
    creds = provider.current()
    assert creds.preferred[0] == JERRY and creds.preferred[1].reveal() == "jerry-1"
    assert creds.alternate is not None and creds.alternate[0] == TOM
    # the same length and content shape again: the new inode still shows the change
    volume.publish(_document(JERRY, "jerry-2"))
    assert provider.current().preferred[1].reveal() == "jerry-2"
    assert provider.current().alternate is None
    assert provider.refresh_count == 2


def test_a_partial_or_empty_file_keeps_the_last_good_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(_document(TOM, "tom-secret-1"))
    provider = CredentialsProvider.from_file(path)
    good = provider.current()
    caplog.set_level(logging.WARNING, logger="rolekit.client")
    broken = [
        "",  # truncated by an in-place writer
        _document(JERRY, "jerry-secret-1")[:30],  # cut off mid-way
        json.dumps({"user": JERRY}),  # complete JSON, not a complete document
    ]
    for n, text in enumerate(broken, 1):
        path.write_text(text)
        for _ in range(3):  # read many times: the same version is logged once
            assert provider.current() is good
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == n, [r.getMessage() for r in warnings]
        assert "keeping the previous ones" in warnings[-1].getMessage()
    assert "jerry-secret-1" not in caplog.text and "tom-secret-1" not in caplog.text
    path.write_text(_document(JERRY, "jerry-secret-1"))
    assert provider.current().preferred == (JERRY, Secret("jerry-secret-1"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "credentials.json does not exist"),
        ("", "credentials.json is empty"),
        ('{"user": "my_app_tom", "password": "s3cret-p4ss"', "is not a complete JSON document"),
        ('["my_app_tom", "s3cret-p4ss"]', "expected a JSON object"),
        ('{"user": "my_app_tom", "password": "s3cret-p4ss", "pwd": "x"}', "unknown key.*'pwd'"),
        ('{"user": "my_app_tom", "password": ""}', "'password' must be a non-empty string"),
        (
            '{"user": "my_app_tom", "password": "s3cret-p4ss", "alt_user": "my_app_jerry"}',
            "give both 'alt_user' and 'alt_password'",
        ),
    ],
)
def test_a_bad_file_at_start_is_named_without_its_content(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "credentials.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RolekitError, match=message) as refused:
        CredentialsProvider.from_file(path)
    assert "s3cret-p4ss" not in str(refused.value)


def test_falls_back_to_the_alternate_member_of_the_document(project: Project) -> None:
    """The file ran ahead of the database: jerry's new password is not applied
    yet, so the login falls back to tom, the document's alternate."""
    project.upgrade("dev")
    path = project.root / "credentials.json"
    path.write_text(_document(JERRY, "not-applied-yet", (TOM, password(project, TOM))))
    provider = CredentialsProvider.from_file(path)
    url = f"postgresql://{project.cluster.host}:{project.cluster.port}/postgres"
    engine = client.create_engine(url, provider)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT session_user").scalar_one() == TOM
    finally:
        engine.dispose()
    assert provider.fallback_count == 1 and provider.auth_failure_count == 1


def _document_of(family: str | None, context: str | None, user: str, secret: str) -> str:
    doc = {"family": family, "context": context, "user": user, "password": secret}
    return json.dumps({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize("told", [True, False], ids=["given", "learned"])
def test_a_document_of_another_family_or_context_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, told: bool
) -> None:
    """A publish to the wrong file must not move the application to another family's role
    (issue 23, finding 16): the family and context are given, or learned from the first
    document; another one is refused, the last good credentials kept, the mismatch named."""
    path = tmp_path / "credentials.json"
    path.write_text(_document_of("my_app", "Dev", TOM, "tom-secret-1"))
    whose = {"family": "my_app", "context": "DEV"} if told else {}
    provider = CredentialsProvider.from_file(path, **whose)
    good = provider.current()
    caplog.set_level(logging.WARNING, logger="rolekit.client")
    wrong = [
        (("other_app", "dev", "other_app_tom"), "for family 'other_app', not 'my_app'"),
        (("postgres", None, "postgres"), "for family 'postgres', not 'my_app'"),
        (("my_app", "prod", JERRY), "for context 'prod', not 'dev'"),
        ((None, "dev", JERRY), "for family none, not 'my_app'"),
    ]
    for n, ((family, context, user), mismatch) in enumerate(wrong, 1):
        path.write_text(_document_of(family, context, user, "wrong-secret-1"))
        assert provider.current() is good
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == n and mismatch in warnings[-1], warnings
        assert "keeping the previous ones" in warnings[-1]
    assert "wrong-secret-1" not in caplog.text and "tom-secret-1" not in caplog.text
    path.write_text(_document_of("my_app", "dev", JERRY, "jerry-secret-1"))
    assert provider.current().preferred == (JERRY, Secret("jerry-secret-1"))


def test_a_wrong_document_at_start_is_refused_when_told_whose(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(_document_of("postgres", "dev", "postgres", "s3cret-p4ss"))
    with pytest.raises(RolekitError, match="for family 'postgres', not 'my_app'") as refused:
        CredentialsProvider.from_file(path, family="my_app", context="dev")
    assert "s3cret-p4ss" not in str(refused.value)


def test_names_from_the_document_are_escaped_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user or family name holding a line break cannot forge a log line (finding 16)."""
    caplog.set_level(logging.DEBUG, logger="rolekit.client")
    forged = "\nERROR forged log line"
    path = tmp_path / "credentials.json"
    path.write_text(_document_of("my_app", "dev", f"my_app_tom{forged}", "tom-secret-1"))
    provider = CredentialsProvider.from_file(path)
    path.write_text(_document_of("my_app", "dev", f"my_app_jerry{forged}", "jerry-secret-1"))
    provider.current()
    path.write_text(_document_of(f"my_app{forged}", "dev", JERRY, "jerry-secret-2"))
    provider.current()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 3, messages
    assert any("'my_app_jerry\\nERROR forged log line'" in m for m in messages), messages
    assert any("family 'my_app\\nERROR forged log line'" in m for m in messages), messages
    assert not [m for m in messages if "\n" in m], messages


def test_a_document_of_another_family_never_moves_the_connections(project: Project) -> None:
    """The wrong document names a role that would log in (the superuser, its real
    password): new connections stay on the family's member (finding 16), the family
    learned from the first document (an application that passes none is kept safe too)."""
    project.upgrade("dev")
    path = project.root / "credentials.json"
    path.write_text(_document_of("my_app", "dev", TOM, password(project, TOM)))
    provider = CredentialsProvider.from_file(path)
    url = f"postgresql://{project.cluster.host}:{project.cluster.port}/postgres"
    engine = client.create_engine(url, provider)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT session_user").scalar_one() == TOM
        path.write_text(_document_of("postgres", "dev", project.user, project.password))
        engine.dispose()  # every new connection asks the provider again
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT session_user").scalar_one() == TOM
    finally:
        engine.dispose()
