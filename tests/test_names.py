"""Role name validation: refused before any SQL is composed."""

from __future__ import annotations

import pytest

from rolekit.errors import RoleNameError
from rolekit.model.family import RoleFamily
from rolekit.model.names import check_role_name


@pytest.mark.parametrize("name", ["my_app", "_x", "a" * 63, "app2_blue"])
def test_valid_names(name: str) -> None:
    assert check_role_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "is empty"),
        ("a" * 64, "64 bytes; PostgreSQL would silently truncate it to 63"),
        ("my'app", "not allowed"),
        ('my"app', "not allowed"),
        ("my;app", "not allowed"),
        ("my\\app", "not allowed"),
        ("my app", "not allowed"),
        ("Mýapp", "not allowed"),
        ("é" * 32, "64 bytes"),
        ("MyApp", "not allowed"),
        ("pg_app", "reserved"),
        ("public", "reserved word"),
        ("a\x1b[31m", "not allowed"),
    ],
)
def test_refused_names_say_why_and_escape_the_name(name: str, why: str) -> None:
    with pytest.raises(RoleNameError) as info:
        check_role_name(name)
    assert why in str(info.value)
    assert "\x1b" not in str(info.value)


def test_family_needs_two_distinct_members() -> None:
    assert RoleFamily.of("app").members == ("app_a", "app_b")
    with pytest.raises(RoleNameError, match="exactly two"):
        RoleFamily.of("app", ["app_a"])
    with pytest.raises(RoleNameError, match="distinct"):
        RoleFamily.of("app", ["app", "app_b"])
    with pytest.raises(RoleNameError, match="not a member"):
        RoleFamily.of("app").other("app_c")
