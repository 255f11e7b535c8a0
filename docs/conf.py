"""Sphinx configuration of rolekit's documentation (``make docs``)."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's rolekit, not an installed copy
sys.path.insert(0, str(ROOT / "docs"))  # cli_reference

project = "rolekit"
author = "rolekit contributors"
copyright = "rolekit contributors"
try:
    release = metadata.version("rolekit")
except metadata.PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
    release = "0+unknown"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# Broken references fail the build (`make docs` runs with -n -W); what is
# ignored here is only what lives outside rolekit's documented surface.
nitpicky = True
_PUBLIC = (
    r"command|errors|client|client\.psycopg|client\.asyncpg|repeatable|operations"
    r"|testing|secrets|runtime\.environment"
)
nitpick_ignore_regex = [
    # the standard library and third-party types in signatures: documented by
    # their own projects (no intersphinx: the build needs no network)
    (r"py:.*", r"(alembic|sqlalchemy|psycopg|psycopg2|psycopg_pool|asyncpg)(\..*)?"),
    (r"py:.*", r"(enum|subprocess|configparser|collections|typing|os|pathlib|io)(\..*)?"),
    (r"py:.*", r"(_?[A-Z]\w*|_\w+|'.*|Operations\..*)"),  # a bare type name or a string annotation
    # rolekit's internal modules (their layout is not API): a public object's
    # docstring or signature may name them; anything in a public module must resolve
    (r"py:.*", rf"rolekit\.(?!({_PUBLIC})\.[A-Za-z]\w*$).*"),
    (r"py:mod", r"rolekit\.testing\.inprocess"),
    # bare names in docstrings of objects a public package re-exports, which
    # Sphinx resolves against the defining module
    (r"py:.*", r"(connect|create_engine|create_async_engine|attach|switch|error|secrets)"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"rolekit {release}"
