"""rolekit benchmarks: ``python -m bench [rotation|overhead|scale] [--pg N]``.

Benchmarks, not tests: they measure and record, they assert nothing about
timing.  Each writes one JSON file under ``bench/results/`` and the run ends
by regenerating ``bench/results/SUMMARY.md`` from every JSON file present.
"""
