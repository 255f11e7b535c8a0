"""What ``rolekit init`` does with a project's ``env.py``.

Three cases, told apart by reading the file, never by guessing:

* it already runs rolekit (imports ``rolekit.runtime.environment``): nothing;
* it is exactly one of the env.py files the installed Alembic's ``alembic
  init`` writes (``generic``, ``async``, ``pyproject``, ``pyproject_async``):
  nothing of the user's is in it, so it is replaced by rolekit's two-line
  env.py, keeping ``target_metadata``;
* anything else is the user's: when its last statement is Alembic's
  ``if context.is_offline_mode(): ... else: ...`` dispatch, the change is
  the import and that block replaced by ``run_migrations(...)``, shown as a
  diff and made only with ``--force``; otherwise the exact lines to add and
  where are printed, and nothing is changed.

An env.py may bind ``run_migrations`` itself (a ``def run_migrations()`` of
its own, an assignment, an import): a plain import of rolekit's would then be
shadowed, and every upgrade would call the user's function with rolekit's
arguments.  There rolekit's is imported as ``_rolekit_run_migrations``, a
private name no ``import *`` brings; an env.py that already imports rolekit's
and binds the name again is shown the fix instead of "already runs rolekit".
"""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass
from pathlib import Path

import alembic

#: the module and function of rolekit's env.py integration
MODULE, FUNCTION = "rolekit.runtime.environment", "run_migrations"
#: the import rolekit's env.py integration needs
IMPORT_LINE = f"from {MODULE} import {FUNCTION}"
#: the name rolekit's function is imported as where env.py binds ``run_migrations``
ALIAS = "_rolekit_run_migrations"
#: the templates of ``alembic init -t NAME`` whose env.py is replaced as a whole
STOCK_TEMPLATES = ("generic", "async", "pyproject", "pyproject_async")

ENV_PY = '''"""Alembic environment: the project's migrations, then rolekit's repeatables.

Written by `rolekit init` in place of Alembic's template. The database URL is
DATABASE_URL when set, else sqlalchemy.url in alembic.ini; rolekit runs the
migrations through psycopg2 whatever driver the URL names (an application can
keep asyncpg or psycopg). The revisions and the repeatables run in one
transaction, under an advisory lock; waits (the drain) happen outside it.
Options: -x context=dev (or ROLEKIT_CONTEXT), -x drain_timeout=S,
-x terminate=true, -x pg_version=N for offline --sql runs.
"""

from logging.config import fileConfig

from alembic import context

from rolekit.runtime.environment import run_migrations

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

# add your model's MetaData object here for 'autogenerate' support:
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
target_metadata = None

run_migrations(context, target_metadata=target_metadata)
'''

WRAPPER = """\
    with RolekitRun(context, connection) as rolekit:  # lock and drain first, no lock held
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            context.run_migrations()
            rolekit.apply_repeatables()  # then the checks after the commit"""


class EnvPyCase(enum.Enum):
    INTEGRATED = "integrated"
    STOCK = "stock"
    PATCHABLE = "patchable"
    MANUAL = "manual"


@dataclass(frozen=True)
class EnvPyPlan:
    """What to do with one env.py."""

    case: EnvPyCase
    #: the new text (STOCK, PATCHABLE); ``None`` when the file stays as it is
    new_text: str | None
    #: for the user: what was found, and for MANUAL the lines to add and where
    note: str


def stock_env_texts() -> dict[str, str]:
    """The env.py of each template of the installed Alembic."""
    root = Path(alembic.__file__).parent / "templates"
    found = {}
    for name in STOCK_TEMPLATES:
        path = root / name / "env.py"
        if path.is_file():
            found[name] = path.read_text(encoding="utf-8")
    return found


def plan_env_py(text: str) -> EnvPyPlan:
    """Decide what ``rolekit init`` does with an env.py holding *text* (LF line ends)."""
    # generic's env.py is also pyproject's: name the first template that has it
    stock = {body: name for name, body in reversed(stock_env_texts().items())}
    if text in stock and "async" not in stock[text]:
        return EnvPyPlan(
            EnvPyCase.STOCK, ENV_PY, f"was Alembic's {stock[text]!r} template: {_REPLACED}"
        )
    if text in stock:
        note = f"was Alembic's {stock[text]!r} template: {_REPLACED} (migrations run through "
        return EnvPyPlan(EnvPyCase.STOCK, ENV_PY, note + "psycopg2; the app keeps its driver)")
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return EnvPyPlan(
            EnvPyCase.MANUAL, None, f"cannot be parsed (line {exc.lineno}): {_manual(None)}"
        )
    if _runs_rolekit(tree):
        shadowed = _shadowing_line(tree)
        if shadowed is None:
            return EnvPyPlan(EnvPyCase.INTEGRATED, None, "already runs rolekit")
        return EnvPyPlan(
            EnvPyCase.MANUAL,
            None,
            f"imports rolekit's {FUNCTION}, but line {shadowed} binds that name again, so "
            f"the migrations call the other one: import rolekit's as {ALIAS} "
            f"({IMPORT_LINE} as {ALIAS}) and call {ALIAS}(context, ...)",
        )
    name = _local_name(tree)
    if name is None:
        return EnvPyPlan(
            EnvPyCase.MANUAL,
            None,
            f"binds both {FUNCTION} and {ALIAS}, the names rolekit's function would be "
            "imported as: rename one of yours, then run rolekit init again",
        )
    if _migrates_several_databases(tree, text):
        return EnvPyPlan(
            EnvPyCase.MANUAL,
            None,
            "migrates several databases (target_metadata per engine): rolekit runs one "
            "database per alembic.ini, so give each database an Alembic project of its own, or "
            + _manual(tree),
        )
    dispatch = _dispatch_block(tree)
    if dispatch is None:
        return EnvPyPlan(EnvPyCase.MANUAL, None, _manual(tree, name))
    renamed = f" (as {ALIAS}: env.py has a {FUNCTION} of its own)" if name == ALIAS else ""
    return EnvPyPlan(
        EnvPyCase.PATCHABLE,
        _patched(text, tree, dispatch, name),
        f"is customised: add the import{renamed}, and call rolekit's run_migrations instead of "
        f"the 'if context.is_offline_mode()' block (lines {dispatch.lineno}-"
        f"{dispatch.end_lineno}) as the diff shows (the functions it called stay, unused): by "
        "hand, or re-run with --force",
    )


_REPLACED = "replaced by rolekit's env.py"


def _runs_rolekit(tree: ast.Module) -> bool:
    """Whether the module imports rolekit's env.py integration."""
    return any(
        isinstance(node, ast.ImportFrom) and node.module == MODULE for node in ast.walk(tree)
    )


def _bindings(tree: ast.Module) -> list[tuple[str, int, ast.AST]]:
    """Every name the module binds, in any scope, with its line: a name bound
    anywhere counts as taken (cautious: the alias costs nothing).  A star
    import binds ``*``."""
    found: list[tuple[str, int, ast.AST]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names = [node.id]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names = list(node.names)
        found += [(name, getattr(node, "lineno", 0), node) for name in names]
    return found


def _local_name(tree: ast.Module) -> str | None:
    """The name to import rolekit's function as: its own unless env.py binds it
    (or star-imports), else :data:`ALIAS` (``None``: that is taken too)."""
    taken = {name for name, _, _ in _bindings(tree)}
    if FUNCTION not in taken and "*" not in taken:
        return FUNCTION
    return ALIAS if ALIAS not in taken else None


def _shadowing_line(tree: ast.Module) -> int | None:
    """The line that rebinds the name rolekit's function is imported as, if any."""
    imported = {
        alias.asname or alias.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == MODULE
        for alias in node.names
        if alias.name == FUNCTION
    }
    for name, line, node in _bindings(tree):
        if name in imported and node is not imported[name]:
            return line
    return None


def _migrates_several_databases(tree: ast.Module, text: str) -> bool:
    """Alembic's ``multidb`` shape: a dict of metadata per engine."""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "target_metadata" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return True
    return 'get_main_option("databases"' in text


def _is_offline_test(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "is_offline_mode"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "context"
    )


def _dispatch_block(tree: ast.Module) -> ast.If | None:
    """Alembic's closing ``if context.is_offline_mode(): ... else: ...``, if it ends the file."""
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.If) and _is_offline_test(last.test) and last.orelse:
        return last
    return None


def _assigns(tree: ast.Module, name: str) -> bool:
    """Whether the module binds *name* at its top level."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def _import_line(name: str) -> str:
    return IMPORT_LINE if name == FUNCTION else f"{IMPORT_LINE} as {name}"


def _call(tree: ast.Module | None, name: str = FUNCTION) -> str:
    if tree is not None and _assigns(tree, "target_metadata"):
        return f"{name}(context, target_metadata=target_metadata)"
    return f"{name}(context)"


def _last_import_line(tree: ast.Module) -> int:
    """The last line of the module's leading imports, else of its docstring (0: neither)."""
    end = 0
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            end = node.end_lineno or node.lineno
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and end == 0:
            end = node.end_lineno or node.lineno  # the docstring, before any import
        else:
            break
    return end


def _patched(text: str, tree: ast.Module, dispatch: ast.If, name: str) -> str:
    lines = text.splitlines(keepends=True)
    start, end = dispatch.lineno - 1, dispatch.end_lineno or dispatch.lineno
    body = [*lines[:start], _call(tree, name) + "\n", *lines[end:]]
    at = _last_import_line(tree)
    return "".join([*body[:at], _import_line(name) + "\n", *body[at:]])


def _find_call(tree: ast.Module, attr: str) -> int | None:
    """The line of the first ``context.<attr>(...)`` call anywhere in the module."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attr
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "context"
        ):
            return node.lineno
    return None


def _manual(tree: ast.Module | None, name: str = FUNCTION) -> str:
    """The lines to add, and where, for an env.py rolekit cannot edit safely."""
    where_import = ""
    configure = run = None
    if tree is not None:
        after = _last_import_line(tree)
        where_import = f" after line {after}" if after else " at the top"
        configure = _find_call(tree, "configure")
        run = _find_call(tree, "run_migrations")
    where_run = (
        f" (your context.configure() is on line {configure}, context.run_migrations() on "
        f"line {run})"
        if configure and run
        else ""
    )
    return (
        "rolekit cannot edit it safely; add these lines by hand.\n"
        f"  1. the import{where_import}:\n      {_import_line(name)}\n"
        f"  2. instead of the code that configures and runs the migrations{where_run}:\n"
        f"      {_call(tree, name)}\n"
        "  or, to keep your own engine and connection, import RolekitRun from the same module\n"
        "  and wrap the configure and the transaction on that connection:\n"
        f"{WRAPPER}\n"
        "  (RolekitRun needs a psycopg2 connection: in an async env.py, use run_migrations.)"
    )
