"""The ``rolekit`` parser for sphinx-argparse, its free text kept as written.

``rolekit.cli._parser()`` lays out descriptions and epilogs for a terminal
(``RawDescriptionHelpFormatter``: indented lists, examples). reStructuredText
would read that indentation as markup, so each one's first paragraph stays
prose and the rest becomes a literal block, exactly as ``--help`` prints it.
"""

from __future__ import annotations

import argparse
import textwrap

from rolekit.cli import _parser


def _literal(text: str | None) -> str | None:
    if not text:
        return text
    first, _, rest = text.partition("\n\n")
    if "\n" in first and not rest:
        first, rest = "", first
    block = "::\n\n" + textwrap.indent(rest, "    ") if rest else ""
    return "\n\n".join(part for part in (first.strip(), block) if part)


def parser() -> argparse.ArgumentParser:
    """rolekit's own parser, with its free text made safe for reStructuredText."""
    root = _parser()
    parsers = [root]
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.extend(action.choices.values())
    for each in parsers:
        each.description = _literal(each.description)
        each.epilog = _literal(each.epilog)
    return root
