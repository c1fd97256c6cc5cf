"""Issue #5 in the pipeline, without Kafka: acks only after a checkpoint holds the batch,
exactly-once training across a simulated crash (update journal), the stability guard's
rollback, manual rollback, skipped updates, offline rollback."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from learner.checkpoints import CheckpointManager
from learner.config import MemoryConfig
from monitoring.metrics import Metrics
from streams.guard import StabilityGuard
from streams.handoff import ModelThread
from streams.journal import UpdateJournal
from streams.pipeline import Pipeline, RawEvent
from streams.records import Reason
from streams.settings import Settings

from .test_pipeline import Sink


class Acks:
    """Records which batches were acked, in order."""

    def __init__(self):
        self.done: list[str] = []

    def __call__(self, name: str):
        async def ack():
            self.done.append(name)
        return ack


@pytest.fixture
def make_pipeline(tiny_learner, tmp_path):
    made = []

    def make(every=1000, guard=False, learner_kw=None, **env):
        settings = Settings.from_env({"CHECKPOINT_DIR": str(tmp_path / "ck"),
                                      "CHECKPOINT_EVERY_UPDATES": str(every),
                                      "STREAM_DEDUP_TEXT_WINDOW": "0",
                                      "METRICS_PROBE_SIZE": "0", **env})
        reg = CollectorRegistry()
        metrics = Metrics(registry=reg, topics=settings.kafka.source_topics(),
                          tasks=["feedback", "market"], reasons=[r.value for r in Reason])
        mt = ModelThread()
        learner = mt.call(tiny_learner, MemoryConfig(capacity=50), **(learner_kw or {}))
        ck = settings.checkpoint.dir
        kw = {}
        if guard:
            kw = dict(guard=StabilityGuard(margin=0.1, min_probe=1),
                      champion=CheckpointManager(f"{ck}/champion", keep_last=1))
        pipe = Pipeline(settings, learner, metrics, mt, CheckpointManager(ck, keep_last=5),
                        journal=UpdateJournal(f"{ck}/journal.jsonl"), **kw)
        pipe.publish_prediction, pipe.publish_dead_letter = Sink(), Sink()
        pipe.publish_model_event = Sink()
        made.append(mt)
        return pipe, reg

    yield make
    for mt in made:
        mt.close()


def labeled(ids, offset=0, label="lost"):
    return [RawEvent(value=json.dumps({"id": i, "text": f"text of {i}", "label": label}).encode(),
                     topic="customer-feedback", partition=0, offset=offset + k, timestamp=0.0)
            for k, i in enumerate(ids)]


def unlabeled(ids, offset=0):
    return [RawEvent(value=json.dumps({"id": i, "text": f"text of {i}"}).encode(),
                     topic="customer-feedback", partition=0, offset=offset + k, timestamp=0.0)
            for k, i in enumerate(ids)]


async def test_acks_wait_for_the_checkpoint_that_holds_the_batch(make_pipeline):
    pipe, reg = make_pipeline(every=2)
    acks = Acks()
    await pipe.handle("feedback", labeled(["a", "b"]), acks("1"))
    assert acks.done == [] and pipe.checkpoints.latest() is None
    assert reg.get_sample_value("streamlearner_stream_pending_ack_events") == 2
    await pipe.handle("feedback", unlabeled(["c"], 2), acks("2"))   # queued behind 1, in order
    assert acks.done == []
    await pipe.handle("feedback", labeled(["d"], 3), acks("3"))     # 2nd update: checkpoint
    assert pipe.checkpoints.latest() is not None
    assert acks.done == ["1", "2", "3"]
    assert reg.get_sample_value("streamlearner_stream_pending_ack_events") == 0
    # Nothing changed the model since: an unlabeled batch is acked at once.
    await pipe.handle("feedback", unlabeled(["e"], 4), acks("4"))
    assert acks.done[-1] == "4"


async def test_idle_flush_and_drain(make_pipeline):
    pipe, _ = make_pipeline(every=100, CHECKPOINT_IDLE_S="0.01")
    acks = Acks()
    await pipe.handle("feedback", labeled(["a"]), acks("1"))
    assert acks.done == []
    import asyncio
    await asyncio.sleep(0.05)
    await pipe.flush_if_idle()
    assert acks.done == ["1"] and pipe.checkpoints.latest() is not None
    await pipe.handle("feedback", labeled(["b"], 1), acks("2"))
    await pipe.drain()
    assert acks.done == ["1", "2"]
    report = await pipe.handle("feedback", labeled(["c"], 2), acks("3"))
    assert report.refused and acks.done == ["1", "2"]   # after drain: left for redelivery


async def test_crash_redelivery_trains_every_event_exactly_once(make_pipeline):
    # Worker 1 trains 3 batches, checkpoints after the 2nd, then "crashes" before batch 3's
    # checkpoint: only batches 1-2 were acked, so Kafka redelivers batch 3 (and, as offset
    # commits lag acks, possibly batch 2 as well).
    pipe, _ = make_pipeline(every=2)
    acks = Acks()
    batches = [labeled(["a", "b"]), labeled(["c", "d"], 2), labeled(["e", "f"], 4)]
    for k, batch in enumerate(batches):
        await pipe.handle("feedback", batch, acks(str(k)))
    assert acks.done == ["0", "1"] and pipe.learner.model_version == 3
    pipe.model.call(lambda: None)   # the journal line of update 3 is written, not checkpointed

    pipe2, reg2 = make_pipeline(every=2)
    assert pipe2.restore() == 2
    assert [e["version"] for e in pipe2.journal.entries()] == [1, 2]   # update 3 is gone
    r2 = await pipe2.handle("feedback", batches[1], acks("1 again"))
    r3 = await pipe2.handle("feedback", batches[2], acks("2 again"))
    assert (r2.duplicate, r2.trained) == (2, 0)   # already in the checkpoint: not retrained
    assert (r3.duplicate, r3.trained) == (0, 2)   # after the checkpoint: trained again
    pipe2.model.call(lambda: None)
    counts = pipe2.journal.trained_counts()
    assert set(counts.values()) == {1} and len(counts) == 6


async def test_guard_rolls_back_to_the_champion(make_pipeline, monkeypatch):
    pipe, reg = make_pipeline(every=1, guard=True, METRICS_PROBE_EVERY_UPDATES="1")
    import itertools
    scores = itertools.chain([0.9, 0.9, 0.5], itertools.repeat(0.9))
    monkeypatch.setattr(pipe.probes, "evaluate", lambda learner: {"feedback": next(scores)})
    monkeypatch.setattr(pipe.probes, "sizes", lambda: {"feedback": 30})
    await pipe.handle("feedback", labeled(["a"]))     # v1 promoted
    await pipe.handle("feedback", labeled(["b"], 1))  # v2 promoted
    assert pipe.guard.version == 2
    await pipe.handle("feedback", labeled(["c"], 2))  # v3: accuracy 0.5 < 0.9 - 0.1
    assert pipe.learner.model_version == 2
    assert reg.get_sample_value("streamlearner_learner_rollbacks_total", {"reason": "regression"}) == 1
    [(key, event)] = pipe.publish_model_event.records
    assert (key, event.from_version, event.to_version, event.task) == ("rollback", 3, 2, "feedback")
    assert [e["version"] for e in pipe.journal.entries()] == [1, 2]
    # v3 is not what a restart resumes from (judged before its checkpoint: never saved).
    assert pipe.checkpoints.version_of(pipe.checkpoints.latest()) == 2
    assert pipe.checkpoints.find(3) is None
    # The next update continues from the champion.
    await pipe.handle("feedback", labeled(["d"], 3))
    assert pipe.learner.model_version == 3


async def test_manual_rollback_and_unknown_version(make_pipeline):
    pipe, reg = make_pipeline(every=1)
    for k in range(3):
        await pipe.handle("feedback", labeled([f"x{k}"], k))
    event = await pipe.rollback_to(1)
    assert (event["from_version"], event["to_version"], event["reason"]) == (3, 1, "manual")
    assert pipe.learner.model_version == 1
    assert reg.get_sample_value("streamlearner_learner_rollbacks_total", {"reason": "manual"}) == 1
    assert {v["version"] for v in pipe.versions()} >= {1, 2, 3}
    with pytest.raises(LookupError):
        await pipe.rollback_to(99)
    await pipe.rollback_to(3)   # forward again, from discarded/
    assert pipe.learner.model_version == 3


async def test_exploding_gradient_is_skipped_and_counted(make_pipeline):
    pipe, reg = make_pipeline(every=1, learner_kw={"max_grad_norm": 1e-12})
    # Two labels: with one, ACE's loss (new samples among their own labels) is exactly 0.
    report = await pipe.handle("feedback", labeled(["a"]) + labeled(["b"], 1, label="rate"))
    assert report.model_version == 0
    assert reg.get_sample_value("streamlearner_learner_skipped_updates_total",
                                {"task": "feedback", "reason": "grad_norm"}) == 1
    assert list(pipe.journal.entries()) == []


async def test_offline_rollback(make_pipeline):
    from streams.admin import local_versions, rollback_offline

    pipe, _ = make_pipeline(every=1)
    for k in range(3):
        await pipe.handle("feedback", labeled([f"x{k}"], k))
    pipe.model.call(lambda: None)
    settings = pipe.settings
    assert [v["version"] for v in local_versions(settings)][:3] == [3, 2, 1]
    rollback_offline(settings, 2)
    pipe2, _ = make_pipeline(every=1)
    assert pipe2.restore() == 2
    assert [e["version"] for e in pipe2.journal.entries()] == [1, 2]
    with pytest.raises(LookupError):
        rollback_offline(settings, 42)


def test_journal_ignores_a_torn_line(tmp_path):
    j = UpdateJournal(tmp_path / "j.jsonl")
    j.append(1, "feedback", ["a"])
    j.close()
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"version": 2, "task": "feedback", "ids": ["b"')   # killed mid-write
    assert [e["version"] for e in j.entries()] == [1]
    assert j.truncate_after(5) == 1
    assert (tmp_path / "j.jsonl").read_text().count("\n") == 1


def test_guard_does_not_judge_a_changed_probe_set():
    g = StabilityGuard(margin=0.1, min_probe=10)
    assert g.judge({"t": 0.9}, {"t": 5}).action == "skip"
    g.accept(3, {"t": 0.9}, {"t": 10})
    assert g.judge({"t": 0.2}, {"t": 12}).action == "promote"   # other probe set: no verdict
    assert g.judge({"t": 0.86}, {"t": 10}).action == "promote"
    assert g.judge({"t": 0.82}, {"t": 10}).action == "hold"
    g2 = StabilityGuard(margin=0.1, min_probe=10)
    g2.load_state_dict(g.state_dict())
    assert g2.judge({"t": 0.7}, {"t": 10}).action == "rollback"


def test_admin_token_is_never_shown():
    s = Settings.from_env({"SERVE_ADMIN_TOKEN": "s3cret-token-0123456789"})
    assert "s3cret" not in repr(s) and "s3cret" not in repr(s.serve)
    from streams.settings import SettingsError
    with pytest.raises(SettingsError, match="SERVE_ADMIN_TOKEN"):
        Settings.from_env({"SERVE_ADMIN_TOKEN": "short"})


async def test_a_job_raising_stop_iteration_does_not_hang_the_caller():
    def broken():
        return next(iter([]))
    with ModelThread() as mt:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await mt.run(broken)
