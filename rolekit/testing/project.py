"""A copy of a rolekit project (alembic.ini, migrations/), driven like a user drives it.

Commands run as subprocesses (``python -m alembic``, ``python -m
rolekit.cli``) in the project's folder, with ``DATABASE_URL`` pointing at a
:class:`~rolekit.testing.cluster.Cluster`, so a test exercises exactly what a
deploy runs.  Everything printed is kept in :attr:`Project.outputs`, for
searching it for secrets.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rolekit.secrets import SecretsFile, generate_password
from rolekit.testing import inprocess
from rolekit.testing.cluster import Cluster

#: the repeatables of :meth:`Project.add_families`
_FLEET = '''"""Each family's own password setter and login state."""

from rolekit.repeatable import FamilyLogin, SetPasswords

FAMILIES = {families!r}

REPEATABLES = [
    repeatable
    for family in FAMILIES
    for repeatable in (
        SetPasswords(f"set_passwords_{{family}}", [f"{{family}}_a", f"{{family}}_b"],
                     context={context!r}),
        FamilyLogin(f"allow_login_for_{{family}}", family, [f"{{family}}_a", f"{{family}}_b"]),
    )
]
'''


class Project:
    """alembic.ini, migrations/ and a passwords.env in a folder, on a cluster.

    :param user: the migration user (the cluster's superuser when ``None``).
    :param pythonpath: folders put first on ``PYTHONPATH`` of the commands.
    :param in_process: run ``alembic`` and ``rolekit`` commands in this
        process (:mod:`rolekit.testing.inprocess`), with the output and exit
        code their command lines give, in a fraction of the time; background
        commands (:meth:`spawn`) are always real processes.
    :param env: environment variables every command gets (for instance a
        short ``ROLEKIT_DRAIN_QUIET_PERIOD``, so tests need not wait 90 s).
    """

    def __init__(
        self,
        root: Path,
        cluster: Cluster,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        *,
        pythonpath: Sequence[Path] = (),
        in_process: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.cluster = cluster
        self.user = user or cluster.superuser
        self.password = password or cluster.superuser_password
        self.dbname = dbname
        self.url = cluster.url(user, password, dbname)
        self.pythonpath = tuple(pythonpath)
        self.in_process = in_process
        self.extra_env = dict(env or {})
        self.outputs: list[str] = []  # everything alembic/rolekit printed, for leak checks
        self.passwords: dict[str, str] = {}

    @classmethod
    def copy(
        cls,
        source: Path,
        root: Path,
        cluster: Cluster,
        *,
        members: Iterable[str] = (),
        contexts: Iterable[str] = (),
        **kw: Any,
    ) -> Project:
        """Copy the project at *source* to *root*; give *members* fresh passwords
        in *contexts* (and the secrets file its fingerprint key)."""
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "alembic.ini", root / "alembic.ini")
        shutil.copytree(
            source / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
        )
        project = cls(root, cluster, **kw)
        project.fresh_passwords(members, contexts)
        return project

    def fresh_passwords(self, members: Iterable[str], contexts: Iterable[str]) -> None:
        members = list(members)
        for ctx in contexts:
            for role in members:
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

    def secret_of(self, role: str, context: str = "dev") -> str:
        """The password of *role* in *context*, as the secrets file holds it."""
        return self.secrets.get(role, context).reveal()

    @property
    def state_path(self) -> Path:
        return self.root / "migrations" / "rotation.json"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text())  # type: ignore[no-any-return]

    def write_state(self, data: dict[str, Any]) -> None:
        """Replace the state file atomically, as an editor or git checkout would."""
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_path)

    def edit_state(self, family: str, context: str, entry: dict[str, Any]) -> None:
        """Change one family's state by hand, as the docs tell GitOps users to:
        the new *entry*, one ``serial`` past the file's (a hand edit advances
        the position, or the upgrade refuses the file as diverged)."""
        data = self.state()
        states = data["families"].setdefault(family, {})
        serial = states.get(context, {}).get("serial", 0)
        states[context] = {**entry, "serial": serial + 1}
        self.write_state(data)

    def write_repeatables(self, source: str, name: str = "my_app.py") -> None:
        (self.root / "migrations" / "repeatable" / name).write_text(source)

    def add_revision(
        self, revision: str, down_revision: str, upgrade: str, downgrade: str, doc: str = ""
    ) -> Path:
        """Write ``migrations/versions/<revision>.py``; *upgrade* and *downgrade*
        are one statement each, using ``op`` (``op.enable_login_tracking()``)."""
        path = self.root / "migrations" / "versions" / f"{revision}.py"
        path.write_text(
            f'''"""{doc or revision}

Revision ID: {revision}
Revises: {down_revision}
"""

from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    {upgrade}


def downgrade() -> None:
    {downgrade}
'''
        )
        return path

    def add_families(
        self,
        families: Sequence[str],
        *,
        context: str = "dev",
        revision: str = "0003",
        down_revision: str = "0002",
    ) -> None:
        """Add role families as separate services would have them, and apply them.

        Revision *revision* creates each family ``F`` with members ``F_a`` and
        ``F_b``; ``migrations/repeatable/fleet.py`` gives each its own
        ``SetPasswords`` and ``FamilyLogin`` in *context* (one per family, so
        rotations of different families never touch each other's);
        ``F_a`` logs in, and both members get fresh passwords.  Then an
        upgrade in *context* applies it all.
        """
        pairs = {f: [f"{f}_a", f"{f}_b"] for f in families}
        creates = "; ".join(f"op.create_role_family({f!r}, {m!r})" for f, m in pairs.items())
        drops = "; ".join(f"op.drop_role_family({f!r}, {m!r})" for f, m in pairs.items())
        self.add_revision(revision, down_revision, creates, drops, doc="more role families")
        self.write_repeatables(_FLEET.format(families=list(families), context=context), "fleet.py")
        data = self.state()
        for family, members in pairs.items():
            data["families"][family] = {context: {"login": [members[0]]}}
        self.write_state(data)
        self.fresh_passwords([m for members in pairs.values() for m in members], [context])
        self.upgrade(context)

    # -- commands ------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ROLEKIT_CONTEXT", "DATABASE_URL")}
        paths = [*map(str, self.pythonpath), env.get("PYTHONPATH", "")]
        env.update(DATABASE_URL=self.url, PYTHONPATH=os.pathsep.join(filter(None, paths)))
        env.update(self.extra_env)
        env.update(extra)
        return env

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 180, **env: Any
    ) -> subprocess.CompletedProcess[str]:
        program = inprocess.runnable(cmd) if self.in_process else None
        if program is not None:
            proc = inprocess.run(program, cmd[3:], cwd=self.root, env=self.env(**env))
        else:
            proc = subprocess.run(
                cmd,
                cwd=self.root,
                env=self.env(**env),
                capture_output=True,
                text=True,
                timeout=timeout,
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
        **env: Any,
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
        self, *args: str, check: bool = True, **env: Any
    ) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "rolekit.cli", *args, check=check, **env)

    def creds(self, family: str = "my_app", context: str = "dev") -> tuple[str, str]:
        """``rolekit creds FAMILY --context C --json``, in this process.

        A subprocess would spend a second starting Python on a loaded
        machine: too slow for a load test's application lag.
        """
        from rolekit.cli import main

        out = io.StringIO()
        args = [
            "creds",
            family,
            "--context",
            context,
            "--json",
            "-c",
            str(self.root / "alembic.ini"),
        ]
        with contextlib.redirect_stdout(out):
            code = main(args)
        if code != 0:
            raise AssertionError(f"rolekit {' '.join(args)} exited {code}")
        data = json.loads(out.getvalue())
        return str(data["user"]), str(data["password"])

    # -- catalog -------------------------------------------------------------

    def query(
        self, text: str, params: Sequence[Any] | None = None, *, as_migrator: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run SQL as the superuser (or as the project's migration user), on its database."""
        user, password = (self.user, self.password) if as_migrator else (None, None)
        conn = self.cluster.connect(user, password, self.dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(text, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()
