"""Performance benchmarks (issue #6): ingest, learner, freshness and serving, each beside its
baseline in the same run. ``streamlearner bench perf`` (or ``make bench``) runs them all and
writes ``bench/results/perf/``; each module also runs alone (``python -m bench.perf.learner``).
"""


def main(argv: list[str] | None = None) -> int:
    from bench.perf.run import main as run_main

    return run_main(argv)
