"""The README is short and points into the docs; the docs show examples and
figures from their one source.

* README.md is at most 250 lines, and every relative link in it exists;
* every ``literalinclude`` of ``docs/`` names an existing file, and every
  example file in ``examples/`` is shown by one (the files
  ``tests/clients/test_examples.py`` and ``tests/test_schedule.py`` run);
* no page and not the README carries a pasted copy of an example;
* ``bench/results/SUMMARY.md`` is included by the docs, and no page and not the
  README copies its table rows.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
_EXAMPLE_SUFFIXES = (".py", ".yaml", ".sh", ".crontab")
_LITERALINCLUDE = re.compile(r"^```\{literalinclude\}\s+(\S+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^```\{include\}\s+(\S+)\s*$", re.MULTILINE)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
README_MAX_LINES = 250


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def _target(page: Path, name: str) -> Path:
    """A directive's path as Sphinx resolves it: ``/x`` from docs/, else from the page."""
    return (DOCS / name.lstrip("/")) if name.startswith("/") else (page.parent / name)


def _examples() -> set[Path]:
    return {p.resolve() for p in (REPO / "examples").rglob("*") if p.suffix in _EXAMPLE_SUFFIXES}


def test_readme_is_short_and_its_links_exist() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme.count("\n") <= README_MAX_LINES, "README.md is over 250 lines: move it to docs/"
    links = [t for t in _LINK.findall(readme) if "://" not in t]
    assert any(t.startswith("docs/") for t in links), "README.md links into no docs page"
    missing = [t for t in links if not (REPO / t).exists()]
    assert missing == [], f"README.md links to missing files: {missing}"


def test_every_example_is_literalincluded_from_its_file() -> None:
    shown: set[Path] = set()
    for page in _pages():
        for name in _LITERALINCLUDE.findall(page.read_text()):
            target = _target(page, name).resolve()
            assert target.is_file(), f"{page.relative_to(REPO)}: literalinclude of missing {name}"
            shown.add(target)
    examples = _examples()
    assert examples, "no example files found"
    unshown = sorted(str(p.relative_to(REPO)) for p in examples - shown)
    assert unshown == [], f"examples no docs page shows (literalinclude them): {unshown}"


def _signature_lines(path: Path) -> set[str]:
    """Lines long enough that finding several of them elsewhere means a copy."""
    return {line.strip() for line in path.read_text().splitlines() if len(line.strip()) >= 40}


def test_no_page_pastes_an_example() -> None:
    texts = {p: p.read_text() for p in [*_pages(), REPO / "README.md"]}
    for example in sorted(_examples()):
        lines = _signature_lines(example)
        for page, text in texts.items():
            page_lines = {line.strip() for line in text.splitlines()}
            copied = lines & page_lines
            assert len(copied) < 3, (
                f"{page.relative_to(REPO)} copies lines of {example.relative_to(REPO)}: "
                "literalinclude the file instead"
            )


def test_the_bench_summary_is_included_never_copied() -> None:
    summary = (REPO / "bench" / "results" / "SUMMARY.md").resolve()
    included = [
        page
        for page in _pages()
        for name in _INCLUDE.findall(page.read_text())
        if _target(page, name).resolve() == summary
    ]
    assert included, "no docs page includes bench/results/SUMMARY.md"
    rows = {
        line.strip()
        for line in summary.read_text().splitlines()
        if line.startswith("| ") and re.search(r"\d", line)
    }
    for page in [*_pages(), REPO / "README.md"]:
        copied = rows & {line.strip() for line in page.read_text().splitlines()}
        assert not copied, f"{page.relative_to(REPO)} copies bench/results/SUMMARY.md rows"
