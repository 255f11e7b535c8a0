"""A throwaway copy of the example project, driven like a user would drive it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rolekit.sandbox import Cluster
from rolekit.secrets import SecretsFile, generate_password

REPO = Path(__file__).resolve().parent.parent


class Project:
    """alembic.ini, migrations/ and a passwords.env in a temp dir."""

    def __init__(
        self,
        root: Path,
        cluster: Cluster,
        user: str | None,
        password: str | None,
        dbname: str = "postgres",
    ):
        self.root = root
        self.cluster = cluster
        self.user = user or cluster.superuser
        self.password = password or cluster.superuser_password
        self.url = cluster.url(user, password, dbname)
        self.outputs: list[str] = []  # everything alembic/rolekit printed, for leak checks
        self.passwords: dict[str, str] = {}

    @classmethod
    def copy(
        cls, root: Path, cluster: Cluster, *, user: str | None = None, password: str | None = None
    ) -> Project:
        shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
        shutil.copytree(
            REPO / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
        )
        project = cls(root, cluster, user, password)
        project.fresh_passwords()
        return project

    @classmethod
    def copy_from(cls, root: Path, project: Project, *, dbname: str) -> Project:
        """Another project (files already in *root*) on database *dbname* of the same
        cluster, with the same migration user and passwords of its own."""
        other = cls(root, project.cluster, project.user, project.password, dbname)
        other.fresh_passwords()
        return other

    def fresh_passwords(self) -> None:
        for ctx in ("dev", "local"):
            for role in ("my_app_tom", "my_app_jerry"):
                self.set_password(role, ctx)
        self.secrets.ensure_fingerprint_key()

    # -- files ---------------------------------------------------------------

    @property
    def secrets(self) -> SecretsFile:
        return SecretsFile(self.root / "passwords.env")

    def set_password(self, role: str, context: str, value: str | None = None) -> str:
        value = value or generate_password()
        self.secrets.set(role, context, value)
        self.passwords[f"{role}.{context}"] = value
        return value

    @property
    def state_path(self) -> Path:
        return self.root / "migrations" / "rotation.json"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text())

    def write_state(self, data: dict[str, Any]) -> None:
        """Replace the state file atomically, as an editor or git checkout would."""
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_path)

    def write_repeatables(self, source: str, name: str = "my_app.py") -> None:
        (self.root / "migrations" / "repeatable" / name).write_text(source)

    # -- commands ------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ROLEKIT_CONTEXT", "DATABASE_URL")}
        env.update(DATABASE_URL=self.url, PYTHONPATH=str(REPO), **extra)
        return env

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd, cwd=self.root, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )
        self.outputs.append(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def spawn(self, *cmd: str, **env: str) -> subprocess.Popen[str]:
        """Start a command in the background (for concurrency and fault tests)."""
        return subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def alembic(
        self,
        *args: str,
        context: str | None = None,
        x: dict[str, str] | None = None,
        check: bool = True,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        xs: list[str] = []
        if context:
            xs += ["-x", f"context={context}"]
        for k, v in (x or {}).items():
            xs += ["-x", f"{k}={v}"]
        return self.run(sys.executable, "-m", "alembic", *xs, *args, check=check, **env)

    def upgrade(self, context: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.alembic("upgrade", "head", context=context, **kw)

    def downgrade(self, target: str = "base", **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.alembic("downgrade", target, **kw)

    def rolekit(
        self, *args: str, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "rolekit.cli", *args, check=check, **env)

    # -- catalog -------------------------------------------------------------

    def query(
        self, text: str, params: tuple[Any, ...] | None = None, *, as_migrator: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run SQL as the superuser (or as the project's migration user)."""
        user, password = (self.user, self.password) if as_migrator else (None, None)
        conn = self.cluster.connect(user, password)
        try:
            with conn.cursor() as cur:
                cur.execute(text, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()
