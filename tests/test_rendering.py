"""The statements rolekit renders, without a server (like Alembic's ``op_fixture``).

Offline (``--sql``) rendering walks the same code as an online run, so these
tests pin the SQL of the operations and repeatables in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rolekit.errors import RepeatableError, RoleNameError
from rolekit.pg import ddl
from rolekit.pg.session import render_offline, session_for
from rolekit.project.config import Settings
from rolekit.project.state import FamilyState, Retire, RotationState
from rolekit.repeatable import FamilyLogin, SetLogin, Sql
from rolekit.repeatable.changelog import Changelog
from rolekit.repeatable.engine import Status, apply, plan
from rolekit.repeatable.run import RunContext
from rolekit.testing import op_fixture


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("version", "grant"),
    [
        (15, 'GRANT "my_app" TO "my_app_tom";'),
        (16, 'GRANT "my_app" TO "my_app_tom" WITH INHERIT TRUE, SET TRUE;'),
    ],
)
def test_create_role_family_renders_for_the_target_version(version: int, grant: str) -> None:
    op, out = op_fixture(version)
    op.create_role_family("my_app", ["my_app_tom", "my_app_jerry"])
    lines = _lines(out.getvalue())
    assert lines[:3] == [
        'CREATE ROLE "my_app" NOLOGIN;',
        'CREATE ROLE "my_app_tom" NOLOGIN;',
        'CREATE ROLE "my_app_jerry" NOLOGIN;',
    ]
    assert grant in lines
    assert 'ALTER ROLE "my_app_tom" SET role = "my_app";' in lines
    # offline the migration user is not known to be a superuser: it is made a
    # member of the group and of the members (to see and end their sessions)
    member_grant = (
        'GRANT "my_app_tom" TO CURRENT_USER WITH INHERIT TRUE, SET FALSE;'
        if version >= 16
        else 'GRANT "my_app_tom" TO CURRENT_USER;'
    )
    assert member_grant in lines


def test_drop_role_family_renders_reassign_drop_owned_and_drop() -> None:
    op, out = op_fixture(16)
    op.drop_role_family("my_app", ["my_app_tom", "my_app_jerry"], reassign_to="owner_role")
    lines = _lines(out.getvalue())
    assert 'REASSIGN OWNED BY "my_app", "my_app_tom", "my_app_jerry" TO "owner_role";' in lines
    assert lines[-2:] == ['DROP ROLE "my_app_tom", "my_app_jerry";', 'DROP ROLE "my_app";']


def test_a_name_that_needs_quoting_is_refused_before_rendering() -> None:
    op, out = op_fixture(16)
    with pytest.raises(RoleNameError, match="is not allowed"):
        op.create_role_family('my"app', ["a_tom", "a_jerry"])
    assert out.getvalue() == ""


def test_ddl_composes_identifiers_never_strings() -> None:
    assert render_offline(ddl.set_login("my_app_tom", False)) == 'ALTER ROLE "my_app_tom" NOLOGIN'
    assert render_offline(ddl.expire_password("x")) == "ALTER ROLE \"x\" VALID UNTIL '-infinity'"
    assert render_offline(ddl.reassign_owned(["a", "b"], None)) == (
        'REASSIGN OWNED BY "a", "b" TO CURRENT_USER'
    )


def _run(tmp_path: Path, state: FamilyState | None, context: str = "dev") -> RunContext:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = migrations\n")
    rotation = RotationState(tmp_path / "rotation.json")
    if state is not None:
        rotation.set("my_app", context, state)
    return RunContext(
        settings=Settings.load(ini),
        contexts=frozenset({context}),
        primary=context,
        rotation=rotation,
    )


def test_family_login_renders_its_declared_state_offline(tmp_path: Path) -> None:
    """A decommissioned family: no password needed, both members NOLOGIN and expired,
    after the other repeatables (login changes run last)."""
    op, out = op_fixture(16)
    session = session_for(op.get_context())
    login = FamilyLogin("allow_login", "my_app", ["my_app_tom", "my_app_jerry"])
    grants = Sql("grants", "GRANT USAGE ON SCHEMA s TO my_app", targets=["my_app"])
    state = FamilyState((), retire=Retire.EXPIRE, decommissioned=True)
    report = apply(session, _run(tmp_path, state), [login, grants])
    assert [i.status for i in report.items] == [Status.PENDING, Status.PENDING]
    assert _lines(out.getvalue()) == [
        "GRANT USAGE ON SCHEMA s TO my_app;",
        'ALTER ROLE "my_app_tom" NOLOGIN;',
        'ALTER ROLE "my_app_jerry" NOLOGIN;',
        "ALTER ROLE \"my_app_tom\" VALID UNTIL '-infinity';",
        "ALTER ROLE \"my_app_jerry\" VALID UNTIL '-infinity';",
    ]


def test_family_login_refuses_a_state_that_locks_everyone_out(tmp_path: Path) -> None:
    op, _ = op_fixture(16)
    session = session_for(op.get_context())
    login = FamilyLogin("allow_login", "my_app", ["my_app_tom", "my_app_jerry"])
    with pytest.raises(Exception, match="lets no member log in"):
        plan(session, _run(tmp_path, FamilyState(())), [login], Changelog(False, b"", {}))


def test_a_login_without_a_password_is_refused_offline(tmp_path: Path) -> None:
    op, out = op_fixture(15)
    session = session_for(op.get_context())
    with pytest.raises(Exception, match="has no password"):
        apply(session, _run(tmp_path, None), [SetLogin("login", {"my_app_tom": True})])
    assert out.getvalue() == ""


def test_duplicate_repeatable_ids_in_one_folder_are_refused(tmp_path: Path) -> None:
    from rolekit.repeatable.loader import load_repeatables

    folder = tmp_path / "repeatable"
    folder.mkdir()
    source = "from rolekit.repeatable import Sql\nREPEATABLES = [Sql('same', 'SELECT 1')]\n"
    (folder / "a.py").write_text(source)
    (folder / "b.py").write_text(source)
    with pytest.raises(RepeatableError, match="duplicate repeatable id 'same'"):
        load_repeatables(folder)
