"""A project as a CI job checks it out: a clone of a bare repository, with the
context's passwords in an age file (what ``--git-push`` needs)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pyrage import x25519

from rolekit.secrets import AGE_IDENTITY_FILE_ENV, SecretsFile
from rolekit.testing import Project

#: who commits in the tests (git refuses to commit without a name)
GIT_ENV = {"GIT_AUTHOR_NAME": "rolekit", "GIT_AUTHOR_EMAIL": "rolekit@example.invalid",
           "GIT_COMMITTER_NAME": "rolekit", "GIT_COMMITTER_EMAIL": "rolekit@example.invalid"}  # fmt: skip

Git = Callable[..., str]


def checkout(project: Project, ignore: str) -> Git:
    """Make the project a git checkout with one commit, ignoring *ignore*
    (``.gitignore`` lines), whose commands commit as :data:`GIT_ENV`; returns a
    ``git`` runner (``cwd=`` another folder)."""
    root = project.root

    def git(*args: str, cwd: Path = root) -> str:
        return subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **GIT_ENV},
        ).stdout

    (root / ".gitignore").write_text(ignore)
    project.extra_env.update(GIT_ENV)  # rolekit's --git-commit commits as this user too
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "start")
    return git


def checkout_with_remote(project: Project, ignore: str) -> tuple[Git, Path]:
    """:func:`checkout`, as a clone of a new bare repository (what a CI job checks
    out); returns the ``git`` runner and the remote's path."""
    remote = project.root.parent / f"{project.root.name}-remote.git"
    git = checkout(project, ignore)
    git("init", "-q", "--bare", str(remote), cwd=project.root.parent)
    git("remote", "add", "origin", str(remote))
    git("push", "-q", "-u", "origin", "main")
    return git, remote


def secrets_in_age(
    project: Project, monkeypatch: pytest.MonkeyPatch, context: str = "dev"
) -> SecretsFile:
    """Every password of *context* in an age file (``secrets.<context>``), with
    an identity made for the test; the rest stays in ``passwords.env``."""
    identity = project.root.parent / f"{project.root.name}-identity.txt"
    identity.write_text(str(x25519.Identity.generate()) + "\n")
    identity.chmod(0o600)
    monkeypatch.setenv(AGE_IDENTITY_FILE_ENV, str(identity))
    project.extra_env[AGE_IDENTITY_FILE_ENV] = str(identity)
    plain = project.secrets
    suffix = f".password.{context}"
    roles = sorted(key.removesuffix(suffix) for key in plain.load() if key.endswith(suffix))
    name = f"{context}.env.age"
    ini = project.root / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "secrets = passwords.env\n", f"secrets = passwords.env\nsecrets.{context} = {name}\n"
        )
    )
    age = SecretsFile(project.root / name)
    for role in roles:
        age.set(role, context, plain.get(role, context).reveal())
    age.ensure_fingerprint_key()
    return age
