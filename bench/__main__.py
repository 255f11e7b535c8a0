"""``python -m bench [rotation|overhead|sops|clients|scale|fleet|drain|soak ...] [--pg N]`` (``make bench``)."""

from __future__ import annotations

import argparse
import sys
import time

from bench import summary
from bench.common import log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which",
        nargs="*",
        metavar="{rotation,overhead,sops,clients,scale,fleet,drain,soak}",
        help="benchmarks to run (default: all eight)",
    )
    parser.add_argument(
        "--pg",
        type=int,
        default=None,
        help="PostgreSQL major version (default: system 15, else the newest cached)",
    )
    args = parser.parse_args(argv)
    known = ["rotation", "overhead", "sops", "clients", "scale", "fleet", "drain", "soak"]
    unknown = [w for w in args.which if w not in known]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(known)})")
    which = args.which or known
    timings: dict[str, float] = {}
    for name in which:
        started = time.monotonic()
        log(f"=== {name} ===")
        if name == "rotation":
            from bench import rotation

            rotation.run(args.pg)
        elif name == "overhead":
            from bench import overhead

            overhead.run(args.pg)
        elif name == "sops":
            from bench import sops_overhead

            sops_overhead.run(args.pg)
        elif name == "clients":
            from bench import client_overhead

            client_overhead.run(args.pg)
        elif name == "soak":
            from bench import soak

            soak.run(args.pg)
        elif name == "scale":
            from bench import scale

            scale.run(args.pg)
        elif name == "fleet":
            from bench import fleet

            fleet.run(args.pg)
        else:
            from bench import drain

            drain.run(args.pg)
        timings[name] = time.monotonic() - started
        log(f"=== {name}: {timings[name]:.0f}s ===")
    summary.write()
    log("done: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
