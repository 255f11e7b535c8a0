"""The README's worked examples are the files the tests run.

Each ``<!-- include examples/... -->`` marker in the README is followed by a
fenced block that must equal that file, and every example file is included,
so no snippet in the README can drift from the code that
``tests/clients/test_examples.py`` executes.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_INCLUDE = re.compile(r"<!-- include (\S+) -->\n```[a-z]*\n(.*?)```\n", re.DOTALL)
_EXAMPLE_SUFFIXES = (".py", ".yaml", ".sh", ".crontab")


def test_each_included_block_is_its_file_and_every_example_is_included() -> None:
    readme = (REPO / "README.md").read_text()
    included = {path: block for path, block in _INCLUDE.findall(readme)}
    assert readme.count("<!-- include ") == len(included), "a marker without its code block"
    for path, block in included.items():
        assert block == (REPO / path).read_text(), (
            f"README.md's copy of {path} differs from the file: paste the file in again"
        )
    examples = {
        str(p.relative_to(REPO))
        for p in (REPO / "examples").rglob("*")
        if p.suffix in _EXAMPLE_SUFFIXES
    }
    assert examples and examples == set(included)
