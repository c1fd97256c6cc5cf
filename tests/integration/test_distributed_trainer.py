"""Issue #14: ``streamlearner train --nproc-per-node 2`` on the embedded broker.

One scenario (process starts are the expensive part on 2 cores): a serve replica and a trainer
of two gloo ranks (tiny random BERT in head mode: DDP all-reduces the heads; the equivalence of
every mode is tests/learner/test_distributed.py's).

1. A labeled stream flows through the replica into the samples topic; the 2-rank trainer learns.
2. Rank 1 is SIGKILLed mid-stream: the trainer stops by itself (no hang: the launcher exits
   with code 3) and leaves only complete checkpoints.
3. The trainer restarts, resumes from its last checkpoint, and learns the rest of the stream.
4. The journal lists every labeled id exactly once; the replica serves the trainer's newest
   version; SIGTERM stops both ranks cleanly (exit 0).
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import os
from pathlib import Path

import orjson

from tools.broker import free_port
from tools.demo import metric_sum, scrape, wait_http
from tools.publish import publish

from .conftest import ROOT, WorkerProc, wait_until
from .test_crash import journal
from .test_worker_e2e import banking_events


class Trainer(WorkerProc):
    """``streamlearner train --nproc-per-node 2``: a launcher and its two ranks."""

    def launch(self) -> "Trainer":
        env = dict(os.environ, **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlearner.cli", "train", "--nproc-per-node", "2"],
            env=env, cwd=ROOT, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    def ready(self, timeout: float = 120) -> "Trainer":
        try:
            wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout, self.proc)
        except Exception:
            self.kill()
            raise RuntimeError(f"trainer did not start:\n{self.log_tail()}") from None
        return self

    def start(self, timeout: float = 120) -> "Trainer":
        return self.launch().ready(timeout)

    def rank_pid(self, rank: int) -> int:
        pids = re.findall(rf"rank {rank}: pid (\d+)", self.log_path.read_text(errors="replace"))
        return int(pids[-1])

    def kill(self) -> None:   # the whole session: launcher and ranks
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _trained(ck: Path) -> collections.Counter:
    return collections.Counter(i for e in journal(ck / "journal.jsonl") for i in e["ids"])


def test_two_rank_trainer_from_the_samples_topic(broker, worker_env, tmp_path, tiny_model_dir):
    env = dict(worker_env, LEARNER_MODEL=tiny_model_dir, LEARNER_MODE="head",
               LEARNER_DEVICE="cpu", LEARNER_DIST_TIMEOUT_S="20", STREAM_BATCH_SIZE="8",
               STREAM_DEDUP_TEXT_WINDOW="0", CHECKPOINT_EVERY_UPDATES="2", CHECKPOINT_IDLE_S="1",
               MODELS_PUBLISH_EVERY_S="0.2", MEMORY_CAPACITY="64", GUARD_ENABLED="false")
    source = env["KAFKA_FEEDBACK_TOPIC"]
    train_ck = tmp_path / "trainer"
    replica = WorkerProc(dict(env, METRICS_PORT=str(free_port()),
                              CHECKPOINT_DIR=str(tmp_path / "serve")), tmp_path / "serve.log", "serve")
    trainers: list[Trainer] = []

    def new_trainer() -> Trainer:
        t = Trainer(dict(env, METRICS_PORT=str(free_port()), CHECKPOINT_DIR=str(train_ck)),
                    tmp_path / f"trainer-{len(trainers)}.log")
        trainers.append(t)
        return t

    events = banking_events(8, prefix="ddp")                       # 40 labeled events
    ids = {e["id"] for e in events}
    payload = lambda evs: [orjson.dumps(e) for e in evs]           # noqa: E731
    try:
        trainer = new_trainer().launch()     # both start at once: starts are what costs here
        replica.start(timeout=120)
        trainer.ready()

        # 1-2. Part 1 flows; rank 1 dies once a checkpoint holds some of it.
        publish(broker.bootstrap, source, payload(events[:24]), progress=False)
        wait_until(lambda: list(train_ck.glob("ckpt-*"))
                   and _trained(train_ck).total() >= 16, 90, 0.2, "training did not start")
        os.kill(trainer.rank_pid(1), signal.SIGKILL)
        try:
            code = trainer.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the trainer hung after losing rank 1:\n{trainer.log_tail()}")
        assert code == 3, trainer.log_tail()
        assert not list(train_ck.glob(".tmp-*")), "a partial checkpoint"
        kept = sorted(train_ck.glob("ckpt-*"))
        assert kept, trainer.log_tail()
        resume_from = int(kept[-1].name.removeprefix("ckpt-"))

        # 3. A restart resumes from the last checkpoint and learns the rest.
        trainer = new_trainer().start()
        publish(broker.bootstrap, source, payload(events[24:]), progress=False)
        wait_until(lambda: set(_trained(train_ck)) >= ids, 120, 0.5,
                   "not every labeled event was trained")
        log = trainer.log_path.read_text(errors="replace")
        assert f"resumed at model version {resume_from}" in log, trainer.log_tail()

        # 4. Exactly once, served by the replica, clean stop.
        counts = _trained(train_ck)
        assert set(counts) == ids and set(counts.values()) == {1}, \
            [i for i, n in counts.items() if n != 1][:10]
        def published() -> float:
            return metric_sum(scrape(trainer.metrics_url), "streamlearner_train_published_version")

        wait_until(lambda: published() > resume_from, 30, 0.2, "nothing published after the restart")
        wait_until(lambda: metric_sum(scrape(replica.metrics_url), "streamlearner_serve_model_version")
                   >= published() > resume_from, 60, 0.5,
                   "the replica did not move to the 2-rank trainer's newest published version")
        assert trainer.stop(timeout=60) == 0, trainer.log_tail()
        log = trainer.log_path.read_text(errors="replace")
        assert re.search(r"rank 1 stopped after \d+ updates", log), trainer.log_tail()
    finally:
        for t in trainers:
            t.kill()
        replica.kill()
