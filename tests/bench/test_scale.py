"""bench.scale's report renders every part it measured (no processes: a synthetic result)."""

from __future__ import annotations

import json

from bench import scale


def _result() -> dict:
    lat = {"n": 3, "p50": 0.01, "p95": 0.015, "p99": 0.016, "max": 0.02}
    one = {"events": 10, "events_per_second": 100.0, "per_replica": [10.0]}
    two = {"events": 10, "events_per_second": 180.0, "per_replica": [5.0, 5.0],
           "cores_used": {"replicas": [0.9, 0.8], "broker": 0.1, "bench": 0.0,
                          "machine": {"busy": 1.9, "idle": 0.05, "steal": 0.0}}}
    raw = {"texts": 8, "batch": 32, "threads": 2, "precision": "auto", "trace": True,
           "dtype": "torch.bfloat16", "texts_per_second": 200.0}
    return {
        "machine": {"cores": 2, "device": "cpu"}, "seconds": 1.0,
        "predict": {"replica_under_training": lat, "worker_under_training": lat,
                    "trainer_updates_per_second_meanwhile": 5.0,
                    "staleness": {"count": 4.0, "p50_upper_bound_seconds": 0.25,
                                  "p99_upper_bound_seconds": 0.75, "buckets": {}, "swaps": 4.0}},
        "baseline": {"shared_model_thread": lat},
        "scale": {"by_config": {
            "default": {"settings": {}, "1": one, "2": two, "ratio_2_vs_1": 1.8},
            "fp32-eager": {"settings": {"SERVE_TRACE": "false"}, "1": one, "2": two,
                           "ratio_2_vs_1": 1.8}}},
        "worker": {"settings": "defaults", "by_precision": {
            "auto": {"worker": {"events_per_second": 150.0}, "raw_batch_inference": raw,
                     "ratio": 0.75}}},
    }


def test_the_report_has_a_row_per_measurement_and_a_plot(tmp_path):
    scale.report(_result(), tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "p99 **16.0 ms**" in md and "**0.75 s** over 4 swaps" in md
    assert md.count("1 vs 2 replicas") == 2 and "SERVE_TRACE=false" in md
    assert "(cores: replicas 0.90 + 0.80, broker 0.10, machine idle 0.05)" in md
    assert "SERVE_PRECISION=auto: bfloat16" in md and "**0.75x**" in md
    assert json.loads((tmp_path / "results.json").read_text())["seconds"] == 1.0
    assert (tmp_path / "scale.png").stat().st_size > 0
