"""Corrupt checkpoint: a worker trains and stops cleanly, leaving several checkpoints; the newest
one is then damaged (model.safetensors truncated, or meta.json corrupted). A worker started on
that directory must detect it (sha256 checksums / JSON), warn, and start from the previous good
checkpoint instead of crashing or silently starting from scratch."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

from tools.publish import make_producer, publish

from .conftest import wait_until
from .test_worker_e2e import banking_events, counters

DAMAGE = {
    # Half the tensor bytes gone, as after a crash of the disk or a copy cut short.
    "truncated model.safetensors": lambda ckpt: _truncate(ckpt / "model.safetensors"),
    # Garbage in the metadata: no checksums, no version, not even JSON.
    "corrupt meta.json": lambda ckpt: (ckpt / "meta.json").write_bytes(b'{"format_version": 1, "mo\x00'),
}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _version(ckpt: Path) -> int:
    return int(re.fullmatch(r"ckpt-(\d+)", ckpt.name).group(1))


def _healthz_version(worker) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=5) as resp:
        return json.loads(resp.read())["model_version"]


def test_corrupt_newest_checkpoint_falls_back_to_previous(broker, worker_env, start_worker,
                                                          tmp_path):
    env = worker_env
    events = banking_events(20)                      # 100 labeled events
    overrides = {"STREAM_BATCH_SIZE": "16", "CHECKPOINT_EVERY_UPDATES": "1",
                 "CHECKPOINT_KEEP_LAST": "3"}
    worker = start_worker(**overrides)
    producer = make_producer(broker.bootstrap)
    try:
        publish(broker.bootstrap, env["KAFKA_FEEDBACK_TOPIC"],
                [json.dumps(e).encode() for e in events], producer=producer, progress=False)
    finally:
        producer.close()
    wait_until(lambda: counters(worker.metrics_url)["new_samples"] >= len(events), timeout=120,
               message="labeled events not trained:\n" + worker.log_tail())
    assert worker.stop() == 0, worker.log_tail()

    trained = Path(env["CHECKPOINT_DIR"])
    checkpoints = sorted((p for p in trained.iterdir() if p.name.startswith("ckpt-")),
                         key=_version, reverse=True)
    assert len(checkpoints) >= 2, [p.name for p in checkpoints]
    newest, previous = _version(checkpoints[0]), _version(checkpoints[1])
    assert newest > previous > 0

    for case, damage in DAMAGE.items():
        directory = tmp_path / case.replace(" ", "-")
        shutil.copytree(trained, directory)
        damage(directory / checkpoints[0].name)
        restarted = start_worker(CHECKPOINT_DIR=str(directory), **overrides)
        served = _healthz_version(restarted)
        c = counters(restarted.metrics_url)
        metric = c["version"]
        log = restarted.log_tail(400)
        assert restarted.stop() == 0, restarted.log_tail()
        print(f"{case}: newest checkpoint v{newest} damaged -> started from v{served} "
              f"(previous v{previous}); replay memory {c['memory']:.0f} of {len(events)} events")
        assert served == previous == metric, (case, served, metric, previous)
        warning = re.search(rf"WARNING.*skipping checkpoint \S*{checkpoints[0].name}.*", log)
        assert warning, f"{case}: no warning about the damaged checkpoint:\n{log}"
        print("   ", warning.group(0)[-160:])
