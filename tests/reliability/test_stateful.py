"""A hypothesis state machine drives rolekit on one real cluster.

Rules: rotation phases (``rolekit rotate my_app begin/finish --apply``, which
may be refused with exit 3 or 4), password changes (``rolekit gen-password
--write`` then an upgrade), context switches (dev/local), downgrades and
upgrades, and client sessions opened with ``rolekit creds`` and closed.

After every step:

* an application that follows ``rolekit creds --json`` for the current
  context logs in, whenever the family exists and was last upgraded in that
  context;
* every member that can log in does so with its password from the secrets
  file of the context the database was last upgraded in (no member is LOGIN
  without a valid password);
* exactly the members the rotation state lists for that context can log in.

Examples share the cluster: each starts with ``alembic downgrade base -x
terminate=true`` and fresh copies of the state and secrets files.
``ROLEKIT_STATEFUL_EXAMPLES``/``ROLEKIT_STATEFUL_STEPS`` run it longer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg2.extensions import connection

from rolekit.testing import Project
from tests.plugins.reliability import Counts
from tests.reliability.helpers import TRACEBACK, cli, login_works, machine_settings

MEMBERS = ("my_app_tom", "my_app_jerry")
CONTEXTS = ("dev", "local")
EXAMPLES = int(os.environ.get("ROLEKIT_STATEFUL_EXAMPLES", "8"))
STEPS = int(os.environ.get("ROLEKIT_STATEFUL_STEPS", "8"))
FILES = ("passwords.env", "migrations/rotation.json")


class RotationMachine(RuleBasedStateMachine):
    """The model: which context the database follows, and open sessions."""

    def __init__(
        self, project: Project, counts: Counts, backup: Path, shared: dict[str, Any]
    ) -> None:
        super().__init__()
        self.project, self.counts, self.shared = project, counts, shared
        if shared.get("family_exists"):
            self._run_alembic("downgrade", "base", x={"terminate": "true"}, expect_ok=True)
        for name in FILES:
            shutil.copy2(backup / name, project.root / name)
        shared["family_exists"] = False
        self.context = "dev"
        #: the context of the last successful upgrade (None: no family)
        self.upgraded: str | None = None
        #: a secret was written for the upgraded context but not applied
        self.stale = False
        self.sessions: list[tuple[connection, str]] = []
        #: the alembic revision the database is at
        self.revision: str | None = None

    # -- plumbing ------------------------------------------------------------

    def _step(self, result: Any) -> None:
        self.counts.stateful_steps += 1
        if result is not None:
            assert TRACEBACK not in result.stderr, result.stderr[-3000:]

    def _run_alembic(
        self, *args: str, x: dict[str, str], expect_ok: bool = False, **kw: Any
    ) -> Any:
        result = self.project.alembic(*args, x=x, check=False, **kw)
        if expect_ok:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

    def _upgraded(self) -> None:
        self.upgraded, self.stale, self.revision = self.context, False, "0002"
        self.shared["family_exists"] = True

    def _drain_refusal(self, output: str) -> None:
        """A failure is allowed only as a guard's that protects our open sessions:
        the drain's, or the refusal to replace the password of a member in use."""
        guarded = "drain timeout" in output or "refusing to replace the password" in output
        assert guarded, output[-3000:]
        assert self.sessions, f"a guard refused without any session of ours:\n{output[-3000:]}"

    def _upgrade(self) -> bool:
        result = self._run_alembic(
            "upgrade", "head", context=self.context, x={"drain_timeout": "1"}
        )
        self._step(result)
        if result.returncode == 0:
            self._upgraded()
            return True
        self._drain_refusal(result.stdout + result.stderr)
        return False

    def _creds(self, context: str) -> dict[str, str]:
        result = cli(self.project, "creds", "my_app", "--context", context, "--json", record=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def _forget_dead_sessions(self) -> None:
        alive = []
        for conn, user in self.sessions:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                alive.append((conn, user))
            except psycopg2.Error:
                conn.close()
        self.sessions = alive

    # -- rules ---------------------------------------------------------------

    @rule(context=st.sampled_from(CONTEXTS))
    def switch_context(self, context: str) -> None:
        self._step(None)
        self.context = context

    @rule()
    def upgrade(self) -> None:
        self._upgrade()

    @rule(to_0001=st.booleans())
    def downgrade(self, to_0001: bool) -> None:
        revision = "0001" if to_0001 and self.revision == "0002" else "base"
        result = self._run_alembic("downgrade", revision, x={"terminate": "true"}, expect_ok=True)
        self._step(result)
        self.revision = revision if revision != "base" else None
        if revision == "base":  # the family is gone, and with it every session
            self.upgraded, self.stale = None, False
            self.shared["family_exists"] = False
            for conn, _ in self.sessions:
                conn.close()
            self.sessions = []

    @rule(phase=st.sampled_from(["begin", "finish"]), terminate=st.booleans())
    def rotate(self, phase: str, terminate: bool) -> None:
        args = ["rotate", "my_app", phase, "--context", self.context, "--apply"]
        if phase == "finish":
            args += ["--drain-timeout", "1"] + (["--terminate"] if terminate else [])
        state_before = self.project.state_path.read_text()
        result = self.project.rolekit(*args, check=False)
        self._step(result)
        assert result.returncode in (0, 3, 4), result.stderr[-3000:]
        if result.returncode == 0:
            self._upgraded()
            self._forget_dead_sessions()
            return
        if result.returncode == 3:
            self._drain_refusal(result.stderr)
        else:
            assert "cannot " in result.stderr, result.stderr
        assert self.project.state_path.read_text() == state_before

    @rule(member=st.sampled_from(MEMBERS))
    def change_password(self, member: str) -> None:
        result = cli(self.project, "gen-password", member, "--context", self.context, "--write")
        assert result.returncode == 0, result.stderr
        self.project.passwords[f"{member}.{self.context}.{len(self.project.passwords)}"] = (
            self.project.secrets.get(member, self.context).reveal()
        )
        if not self._upgrade() and self.upgraded == self.context:
            self.stale = True

    @precondition(
        lambda self: self.upgraded is not None and self.upgraded == self.context and not self.stale
    )
    @rule()
    def open_session(self) -> None:
        self._step(None)
        creds = self._creds(self.context)
        conn = self.project.cluster.connect(
            creds["user"], creds["password"], application_name="app"
        )
        self.sessions.append((conn, creds["user"]))

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        self._step(None)
        conn, _ = self.sessions.pop(data.draw(st.integers(0, len(self.sessions) - 1)))
        conn.close()

    # -- invariants ------------------------------------------------------------

    def _login_members(self) -> list[str]:
        rows = self.project.query(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin"
            " AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) ORDER BY 1",
            (list(MEMBERS),),
        )
        return [r[0] for r in rows]

    @invariant()
    def application_following_creds_logs_in(self) -> None:
        if self.upgraded != self.context or self.stale:
            return
        creds = self._creds(self.context)
        conn = self.project.cluster.connect(creds["user"], creds["password"], connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT session_user, current_user")
                assert cur.fetchone() == (creds["user"], "my_app")
        finally:
            conn.close()

    @invariant()
    def every_login_member_has_a_working_password(self) -> None:
        if self.upgraded is None or self.stale:
            return
        secrets = self.project.secrets
        for member in self._login_members():
            password = secrets.get(member, self.upgraded).reveal()
            assert login_works(self.project.cluster, member, password), (
                f"{member} is LOGIN but its {self.upgraded} password does not work"
            )

    @invariant()
    def login_members_match_the_rotation_state(self) -> None:
        if self.upgraded is None:
            return
        declared = self.project.state()["families"]["my_app"][self.upgraded]["login"]
        assert self._login_members() == sorted(declared)

    def teardown(self) -> None:
        for conn, _ in self.sessions:
            conn.close()


@pytest.mark.slow
def test_rotation_state_machine(project: Project, counts: Counts, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    for name in FILES:
        (backup / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project.root / name, backup / name)
    shared: dict[str, Any] = {}
    run_state_machine_as_test(
        lambda: RotationMachine(project, counts, backup, shared),
        settings=machine_settings(EXAMPLES, STEPS),
    )


def test_recreated_family_gets_every_password_when_one_changed(project: Project) -> None:
    """Found by the state machine: the family is dropped and created again
    while one password changed.  Every member is a new role without a
    password, so every password must be sent, not only the changed one."""
    project.upgrade("dev")
    project.downgrade(x={"terminate": "true"})
    cli(project, "gen-password", "my_app_jerry", "--context", "dev", "--write")
    project.upgrade("dev")
    rows = project.query(
        "SELECT rolname, rolcanlogin, rolpassword IS NOT NULL FROM pg_authid"
        " WHERE rolname IN ('my_app_tom', 'my_app_jerry') ORDER BY 1"
    )
    assert rows == [("my_app_jerry", False, True), ("my_app_tom", True, True)]
    creds = json.loads(
        cli(project, "creds", "my_app", "--context", "dev", "--json", record=False).stdout
    )
    assert login_works(project.cluster, creds["user"], creds["password"])
