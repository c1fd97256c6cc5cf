"""``bash bench/gpu.sh --tiny``: the prepared GPU run, every section, at CI sizes on the CPU.

Run in this process (``bench.perf.gpu.main``, what the script execs) on the session's tiny BERT:
a fresh interpreter would spend most of the test importing transformers again;
tests/bench/test_perf.py runs the script itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.perf import gpu


def test_gpu_script_tiny_runs_every_section(tmp_path, tiny_model_dir):
    assert gpu.main(["--tiny", "--model", tiny_model_dir, "--seq-lens", "16", "--modes", "head,lora",
                     "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    name = Path(tiny_model_dir).name
    cells = {(r["model"], r["mode"], r["seq_len"], r["variant"]) for r in results["learner"]}
    assert cells == {(name, "head", 16, "-"), (name, "lora", 16, "-"),
                     (name, "full", 16, "checkpointing")}
    assert all(r["learn_samples_per_second"] > 0 and r["predict_texts_per_second"] > 0
               for r in results["learner"])
    ddp = results["ddp"]
    assert ddp["ranks"] == 2 and ddp["backend"] == "gloo"
    assert all(r["n_ranks_samples_per_second"] > 0 for r in ddp["rows"])
    assert results["continual"]["mode"] == "lora" and results["continual"]["train_samples"] == 32
    md = (tmp_path / "results.md").read_text()
    for heading in ("## Learner", "## 1 vs N ranks", "## Continual BANKING77, lora mode"):
        assert heading in md
