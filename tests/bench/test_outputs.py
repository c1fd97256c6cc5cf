"""bench.outputs at a tiny size: both paths run against the embedded broker and the report has
its rows (no timing assertions)."""

from __future__ import annotations

import argparse

import pytest

from bench import outputs


@pytest.mark.integration
def test_a_tiny_run_measures_both_paths_and_reports_them(tmp_path):
    args = argparse.Namespace(events=64, batch=32, partitions=2, rounds=2, out=str(tmp_path))
    result = outputs.run(args)
    assert {r["path"] for r in result["rounds"]} == {"producer", "faust"}
    assert all(r["events"] == 64 and r["cpu_us_per_event"] > 0 for r in result["rounds"])
    assert [r["path"] for r in result["rounds"][:2]] == ["producer", "faust"]
    assert [r["path"] for r in result["rounds"][2:]] == ["faust", "producer"]   # alternated
    outputs.report(result, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "Faust `Topic.send` (baseline)" in md and "x** the CPU" in md
    assert (tmp_path / "outputs.png").stat().st_size > 0
