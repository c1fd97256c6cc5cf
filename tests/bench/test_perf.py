"""The perf benchmarks (issue #6) at tiny sizes: they run and report their keys. No timing
assertions: on shared machines absolute and relative times are noise."""

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench.perf import learner as perf_learner
from bench.perf import run as perf_run
from bench.perf import serving as perf_serving
from bench.perf.common import percentile, summary

ROOT = Path(__file__).resolve().parents[2]


def _args(module, **overrides):
    import argparse

    p = argparse.ArgumentParser()
    module.add_arguments(p)
    ns = p.parse_args([])
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def test_percentile_is_nearest_rank():
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50 and percentile(xs, 99) == 99 and percentile(xs, 100) == 100
    assert math.isnan(percentile([], 50))
    assert summary([1.0, 2.0])["n"] == 2


def test_learner_bench_all_modes(tiny_model_dir):
    args = _args(perf_learner, model=tiny_model_dir, device="cpu", batches=2, warmup=1, batch_size=4)
    result = perf_learner.run(args)
    for mode in ("head", "lora", "full"):
        r = result[mode]
        for key in ("samples_per_second", "ratio_vs_plain_loop", "plain_loop_samples_per_second",
                    "peak_rss_bytes", "new_samples_per_second"):
            assert r[key] > 0, (mode, key)
        assert r["samples_trained"] > r["new_samples"] == 8  # replay joined after the warm-up
    assert result["head"]["ratio_cached_vs_recompute_replay"] > 0


def test_plain_loop_trains_the_replayed_samples_too(tiny_model_dir):
    from learner import Learner, LearnerConfig

    learner = Learner(LearnerConfig(model=tiny_model_dir, device="cpu", mode="head"))
    drawn = perf_learner._record_replay(learner)
    learner.learn_many("t", ["a b", "c d"], ["x", "y"])
    learner.learn_many("t", ["e f", "g h"], ["x", "y"])
    assert [len(d) for d in drawn] == [0, 2]


def test_serving_bench(tiny_model_dir):
    args = _args(perf_serving, model=tiny_model_dir, device="cpu", singles=4, batch_texts=8,
                 under_training=2, train_batches=2)
    r = perf_serving.run(args)
    assert r["single"]["n"] == 4 and r["single_p99_seconds"] > 0
    assert r["single_under_training"]["n"] == 2
    assert set(r["batch"]) == {"32", "256"} and r["batch_texts_per_second"] > 0


def test_gpu_script_runs_on_cpu(tiny_model_dir, tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--model", tiny_model_dir,
                           "--device", "cpu", "--seq-lens", "16,32", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "learn samples/s" in proc.stdout
    rows = json.loads(out.read_text())["gpu"]
    assert {(r["mode"], r["seq_len"]) for r in rows} == {(m, s) for m in ("head", "lora", "full")
                                                          for s in (16, 32)}
    assert all(r["learn_samples_per_second"] > 0 and not r["compiled"] for r in rows)


def test_report_and_targets(tmp_path):
    results = {
        "machine": {"cores": 2, "torch_threads": 2, "torch": "x", "device": "cpu",
                    "load_average_at_start": [1.0, 1.0, 1.0]},
        "omp_wait_policy": "PASSIVE", "sizes": "tiny", "wall_seconds": 1.0,
        "freshness": {"p99_seconds": 3.0, "p50_seconds": 1.0, "p95_seconds": 2.0, "max_seconds": 3.0,
                      "capacity_events_per_second": 10.0, "backlog": 4, "offered_events_per_second": 8.0,
                      "load_fraction": 0.8, "load_seconds": 1.0, "timed_events": 3, "values": [1.0, 2.0, 3.0]},
    }
    results["targets"] = perf_run.evaluate(results)
    by_key = {t["key"]: t for t in results["targets"]}
    assert by_key["freshness.p99_seconds"]["met"] is False
    assert by_key["ingest.ratio_vs_bare_faust"]["met"] is None
    md = perf_run.markdown(results)
    assert "Freshness" in md and "**no**" in md
    perf_run.plots(results, tmp_path)
    assert (tmp_path / "freshness.png").stat().st_size > 0


@pytest.mark.integration
def test_runner_tiny_ingest_and_freshness(tiny_model_dir, tmp_path):
    """The embedded broker, Faust consumers and a real worker, at tiny sizes, via the runner."""
    rc = perf_run.main(["--sizes", "tiny", "--only", "ingest,freshness", "--model", tiny_model_dir,
                        "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "results.json").read_text())
    for key in ("ingest.ratio_vs_bare_faust", "ingest.events_per_second", "freshness.p99_seconds",
                "machine.cores", "machine.torch", "machine.device"):
        assert perf_run.get(r, key) is not None, key
    assert set(r["ingest"]["consumers"]) >= {"bare_aiokafka", "bare_faust", "ingest"}
    assert (tmp_path / "results.md").stat().st_size > 0


def test_levers_run(tiny_model_dir, tmp_path):
    from bench.perf import levers

    out = tmp_path / "levers.json"
    assert levers.main(["--rounds", "1", "--model", tiny_model_dir, "--out", str(out)]) == 0
    r = json.loads(out.read_text())["levers"]
    assert set(r) >= {"shared_encode", "sorted_sub_batches", "cleaning_hints", "tokenize_share"}
    assert all(r[k]["speedup"] > 0 for k in ("shared_encode", "sorted_sub_batches", "cleaning_hints"))
