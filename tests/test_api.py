"""The declared Python API: ``__all__`` of the command and error modules, and an
Alembic ``Config`` taken wherever a path is (like Alembic's ``command.*``)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

import rolekit.command
import rolekit.errors
from rolekit.project.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_the_public_modules_declare_what_they_export() -> None:
    for module in (rolekit.command, rolekit.errors):
        assert module.__all__, module
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], (module.__name__, missing)
    errors = {n for n in dir(rolekit.errors) if n.endswith("Error")}
    assert errors <= set(rolekit.errors.__all__)


def test_an_alembic_config_is_taken_like_a_path() -> None:
    ini = REPO / "alembic.ini"
    from_config = load_settings(Config(str(ini)))
    from_path = load_settings(str(ini))
    assert isinstance(from_config, Settings)
    assert from_config.root == from_path.root == REPO
    assert from_config.state_file == from_path.state_file
    assert from_config.secrets_files == from_path.secrets_files


def test_every_environment_variable_is_declared_in_one_place() -> None:
    """ROLEKIT_* and DATABASE_URL are read through rolekit.model.variables only,
    and every ROLEKIT_* name rolekit mentions is one it declares (and documents)."""
    import re

    from rolekit.model.variables import VARIABLES

    declared = {v.name for v in VARIABLES}
    package = REPO / "rolekit"
    read_directly, unknown = [], set()
    for path in package.rglob("*.py"):
        if path.parts[-2] == "testing" or path.name == "variables.py":
            continue  # the harness's own knobs; the registry itself
        text = path.read_text()
        if re.search(r"environ(?:\.get)?[\[(]\s*[\"'](?:ROLEKIT_|DATABASE_URL)", text):
            read_directly.append(str(path.relative_to(REPO)))
        unknown |= set(re.findall(r"\bROLEKIT_[A-Z_]+\b", text)) - declared
    assert read_directly == []
    assert unknown - {"ROLEKIT_TABLES"} == set()  # a constant's name, not a variable


def test_every_environment_variable_is_documented() -> None:
    from rolekit.model.variables import VARIABLES

    page = (REPO / "docs" / "reference" / "configuration.md").read_text()
    assert [v.name for v in VARIABLES if f"`{v.name}`" not in page] == []
