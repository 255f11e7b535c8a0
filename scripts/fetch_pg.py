#!/usr/bin/env python3
"""Download PostgreSQL server binaries for rolekit's throwaway test clusters.

Only PostgreSQL 15 comes with the system; the tests, ``make demo`` and the
benchmarks can run against other majors once their binaries are in the cache.
Fetching is an explicit step so that test runs never touch the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# runnable as `python scripts/fetch_pg.py` from a checkout, without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rolekit.testing.binaries import cache_dir, fetch_binaries


def main(argv: list[str] | None = None) -> int:
    """Fetch every requested major; exit 1 on the first that fails."""
    parser = argparse.ArgumentParser(
        description="Download PostgreSQL binaries for rolekit's sandbox clusters.",
        epilog=f"Cache: {cache_dir()} (override with ROLEKIT_PG_CACHE).",
    )
    parser.add_argument(
        "majors", nargs="*", type=int, metavar="MAJOR", help="e.g. 14 16 17 18 (none: no-op)"
    )
    args = parser.parse_args(argv)
    for major in args.majors:
        try:
            bindir = fetch_binaries(major)
        except RuntimeError as exc:
            print(f"PostgreSQL {major}: {exc}", file=sys.stderr)
            return 1
        print(f"PostgreSQL {major}: {bindir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
