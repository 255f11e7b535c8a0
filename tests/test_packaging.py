"""What the package declares: one version, ``rolekit --version``, ``python -m rolekit``,
and a pyproject.toml that publishes only what users install.  No server."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import rolekit
from rolekit.cli import main

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_version_has_one_source_pyproject_toml() -> None:
    # pyproject.toml -> the installed metadata -> rolekit.__version__
    assert rolekit.__version__ == version("rolekit") == PYPROJECT["project"]["version"]
    assert f'"{rolekit.__version__}"' not in (REPO / "rolekit" / "__init__.py").read_text()


def test_rolekit_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"rolekit {rolekit.__version__}\n"


def test_python_m_rolekit_is_the_rolekit_command() -> None:
    run = [sys.executable, "-m", "rolekit"]
    shown = subprocess.run([*run, "--version"], capture_output=True, text=True, cwd=REPO)
    assert (shown.returncode, shown.stdout) == (0, f"rolekit {rolekit.__version__}\n")
    bare = subprocess.run(run, capture_output=True, text=True, cwd=REPO)
    assert bare.returncode == 2  # a command is required: argparse's usage error
    assert bare.stderr.startswith("usage: rolekit ")


def test_only_what_users_install_is_published() -> None:
    project = PYPROJECT["project"]
    # the drivers, age and sops are extras; what developing rolekit needs is a
    # dependency group (PEP 735), never published in the wheel's metadata
    assert set(project["optional-dependencies"]) == {"age", "sops", "psycopg", "asyncpg", "asyncio"}
    assert {"test", "bench", "lint"} <= set(PYPROJECT["dependency-groups"])
    makefile = (REPO / "Makefile").read_text()
    for group in ("test", "lint", "bench"):
        assert f"--group {group}" in makefile


def test_lint_tools_are_pinned_exactly() -> None:
    lint = PYPROJECT["dependency-groups"]["lint"]
    assert {req.split("==")[0] for req in lint} == {"ruff", "mypy"}
    assert all(req.count("==") == 1 for req in lint), lint


def test_the_license_and_the_project_files_exist() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert all((REPO / name).is_file() for name in project["license-files"])
    assert "MIT License" in (REPO / "LICENSE").read_text()
    for name in ("CHANGELOG.md", "SECURITY.md"):
        assert (REPO / name).is_file(), name
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # PEP 639
