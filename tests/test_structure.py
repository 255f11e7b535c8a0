"""The shape of the package: no import cycles, small modules, a light client."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rolekit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """rolekit modules imported at module level (not under TYPE_CHECKING, not in functions)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ():
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names if a.name.startswith("rolekit")}
            elif (
                isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("rolekit")
            ):
                found.add(sub.module)
                # ``from rolekit import catalog`` imports the module rolekit.pg.catalog
                for alias in sub.names:
                    candidate = f"{sub.module}.{alias.name}"
                    if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists():
                        found.add(candidate)
    return found


def test_no_import_cycle_in_the_package() -> None:
    graph = {_module_name(p): _runtime_imports(p) for p in PACKAGE.rglob("*.py")}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*stack, nxt], done)
        done.add(node)

    finished: set[str] = set()
    for start in sorted(graph):
        if start not in finished:
            visit(start, [start], finished)
    # a package importing its own submodules, which import siblings, is how
    # packages work: only cycles between distinct modules count
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert real == [], "\n".join(" -> ".join(c) for c in real)


#: rolekit's packages (and top-level modules), lowest first: each may import
#: only those before it.  Units on one line are peers that import neither.
LAYERS = [
    ["__init__", "errors"],
    ["_fileio", "_process"],
    ["model"],
    ["secrets"],
    ["project"],
    ["client", "pg"],
    ["deployment"],
    ["operations", "repeatable"],
    ["runtime"],
    ["rotation", "scaffold"],
    ["command"],
    ["cli"],
    ["testing"],
    ["__main__"],  # python -m rolekit
]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _all_imports(path: Path) -> set[str]:
    """Every rolekit module *path* imports anywhere: in functions and under
    ``TYPE_CHECKING`` too, since each is a dependency all the same."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rolekit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "rolekit":
                found |= {f"rolekit.{a.name}" for a in node.names}
            elif node.module.startswith("rolekit."):
                found.add(node.module)
        elif (  # importlib.import_module("rolekit.x.y") and lazy attribute maps
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("rolekit.")
            and _is_module(node.value)
        ):
            found.add(node.value)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_packages_import_in_one_direction() -> None:
    """No package-level cycle: a package imports only the layers below it."""
    rank = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(rank), f"place new units in LAYERS: {sorted(units - set(rank))}"
    upward = []
    for path in PACKAGE.rglob("*.py"):
        here = _unit(_module_name(path))
        for module in _all_imports(path):
            there = _unit(module)
            if there != here and rank[there] >= rank[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert upward == [], "\n".join(sorted(upward))


def test_importing_the_client_imports_no_alembic_no_repeatables_no_driver() -> None:
    code = "import json, sys, rolekit.client; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    modules = set(json.loads(out))
    for forbidden in (
        "alembic",
        "sqlalchemy",
        "psycopg2",
        "psycopg",
        "psycopg_pool",
        "asyncpg",
        "greenlet",
        "rolekit.repeatable",
        "rolekit.runtime.environment",
    ):
        assert not {m for m in modules if m == forbidden or m.startswith(forbidden + ".")}, (
            forbidden
        )
    assert "rolekit.client._provider" in modules


def test_importing_the_testing_harness_has_no_side_effects() -> None:
    code = (
        "import rolekit.testing, rolekit.testing.cluster as c, rolekit.testing.binaries as b;"
        "print(b.system_bindirs.cache_info().currsize, c._register_cleanup.cache_info().currsize)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", "0"]  # no system paths globbed, no exit hook registered


def test_each_driver_module_imports_only_its_driver() -> None:
    """An asyncpg app does not load psycopg, and the reverse."""
    for module, absent in (
        ("rolekit.client.asyncpg", ("psycopg", "psycopg2", "sqlalchemy", "alembic")),
        ("rolekit.client.psycopg", ("asyncpg", "psycopg2", "sqlalchemy", "alembic")),
    ):
        code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        modules = set(json.loads(out))
        for forbidden in absent:
            assert forbidden not in modules, (module, forbidden)
