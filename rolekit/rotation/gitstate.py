"""``rotate auto --git-commit`` and ``--git-push``: the state file and the secrets file in git.

A CI job or a Kubernetes CronJob runs in a checkout that vanishes with it.
What ``begin`` wrote (the state file, and the new password in the secrets
file) exists nowhere else until it is pushed, so ``--git-push`` pushes after
every phase, before anything is published: a push that fails stops the run
while no application has the new password, and the next run carries on.  For
the same reason it refuses up front a secrets file git ignores (a plaintext
file): its new password would be lost with the checkout.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rolekit.errors import ExitCode, RolekitError, mask_url_passwords
from rolekit.project.config import Settings

Emit = Callable[[dict[str, Any]], None]


class GitError(RolekitError):
    """A phase is applied in the database, but git could not record or push it."""

    exit_code = ExitCode.PROBLEM


def _git(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(settings.root), *args], capture_output=True, text=True, check=False
    )


def _ignored(settings: Settings, path: Path) -> bool:
    return _git(settings, "check-ignore", "-q", str(path)).returncode == 0


def _why(done: subprocess.CompletedProcess[str]) -> str:
    """git's last line of complaint, a token in a remote's URL masked."""
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return mask_url_passwords(lines[-1][:200]) if lines else f"exit {done.returncode}"


def require_pushable(settings: Settings, context: str) -> None:
    """Before anything changes: ``--git-push`` needs a branch with an upstream, and a
    secrets file git keeps (an age file), or the new password would be lost."""
    upstream = _git(settings, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}")
    if upstream.returncode != 0:
        raise RolekitError(
            f"--git-push needs {settings.root} to be a git checkout on a branch with an upstream "
            f"({_why(upstream) or 'git failed'}); nothing changed"
        )
    secrets = settings.secrets_file(context)
    if _ignored(settings, secrets):
        raise RolekitError(
            f"--git-push: git ignores {secrets.name}, the secrets file of context {context!r}, so "
            "the new password would be lost with this checkout; keep the context's passwords in "
            f"an encrypted file git keeps: SOPS (secrets.{context} = passwords.{context}.sops.env "
            f"in [rolekit]) or age (secrets.{context} = passwords.{context}.env.age); "
            "nothing changed"
        )


def commit(
    settings: Settings, family: str, context: str, step: str, emit: Emit, *, push: bool
) -> None:
    """Commit exactly the state file and the secrets file (unless git ignores it: a
    plaintext secrets file must never reach the repository), then push if asked."""
    paths = [settings.state_file, settings.secrets_file(context)]
    tracked = [str(p) for p in paths if not _ignored(settings, p)]
    if not _git(settings, "status", "--porcelain", "--", *tracked).stdout.strip():
        emit({"event": "git commit", "skipped": "nothing changed"})  # a resumed step
    else:
        added = _git(settings, "add", "--", *tracked)
        message = f"rolekit: rotate {family} ({context}): {step}"
        done = _git(settings, "commit", "-m", message, "--only", "--", *tracked)
        if added.returncode != 0 or done.returncode != 0:
            raise GitError(
                f"git could not commit {', '.join(map(shlex.quote, tracked))} "
                f"({_why(added if added.returncode else done)}); the {step} is applied in the "
                "database; re-run to record it"
            )
        emit({"event": "git commit", "message": message, "paths": tracked})
    if push:
        _push(settings, step, emit)


def _push(settings: Settings, step: str, emit: Emit) -> None:
    """Push; when the branch moved meanwhile, rebase once onto it and push again."""
    done = _git(settings, "push", "--quiet")
    if done.returncode != 0:
        rebased = _git(settings, "pull", "--rebase", "--quiet")
        done = _git(settings, "push", "--quiet") if rebased.returncode == 0 else rebased
    if done.returncode != 0:
        raise GitError(
            f"git push failed ({_why(done)}): the {step} is applied in the database but not in "
            "the repository, and nothing was published after it; the next run carries on"
        )
    emit({"event": "git push", "ok": True})
