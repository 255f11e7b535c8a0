"""Issue 20: ``rotate FAMILY PHASE`` refuses the options of another phase (exit 2)
instead of dropping them silently, and keeps every valid command line valid."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rolekit.cli import _parser
from rolekit.cli._rotate import PHASE_OPTIONS, check_phase_options

VALID = [
    ["rotate", "my_app", "begin", "--context", "prod", "--apply"],
    ["rotate", "my_app", "finish", "--apply", "--drain-timeout", "300", "--quiet-period", "90"],
    ["rotate", "my_app", "finish", "--terminate", "--json"],
    [
        "rotate", "my_app", "auto", "--context", "prod", "--apply", "--max-age", "90d",
        "--move-timeout", "900", "--publish", "cat", "--publish-format", "k8s-secret",
        "--publish-timeout", "60", "--quiet-period", "30", "--git-commit", "--git-push", "--json",
    ],
]  # fmt: skip

WRONG = [
    (["rotate", "my_app", "begin", "--terminate", "--publish", "x", "--max-age", "1d"], "begin"),
    (["rotate", "my_app", "begin", "--quiet-period", "5"], "--quiet-period (finish/auto)"),
    (["rotate", "my_app", "finish", "--publish-format", "json"], "--publish-format (auto)"),
    (["rotate", "my_app", "auto", "--drain-timeout", "5"], "--drain-timeout (finish)"),
    (["rotate", "my_app", "auto", "--terminate"], "--terminate (finish)"),
]


@pytest.mark.parametrize("argv", VALID, ids=lambda a: a[2])
def test_every_phase_takes_its_own_options(argv: list[str]) -> None:
    check_phase_options(_parser().parse_args(argv))


@pytest.mark.parametrize(("argv", "named"), WRONG, ids=lambda a: " ".join(a[2:4]))
def test_an_option_of_another_phase_is_refused_with_exit_2(argv: list[str], named: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rolekit.cli", *argv, "--config", "/nonexistent/alembic.ini"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "does not take" in proc.stderr and named in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_phase_option_exists_on_the_parser() -> None:
    dests = {a.dest for a in _parser()._subparsers._group_actions[0].choices["rotate"]._actions}  # type: ignore[union-attr]
    assert {d for options in PHASE_OPTIONS.values() for d in options} <= dests
