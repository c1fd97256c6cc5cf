"""Issue #5 on the worker's batch path, without Kafka: acks only after a checkpoint holds the
batch, exactly-once training across a simulated crash (update journal), the stability guard's
rollback, manual rollback, skipped updates, offline rollback (the same rearrangement)."""

from __future__ import annotations

import pytest

from lifecycle.guard import StabilityGuard
from lifecycle.journal import UpdateJournal
from streamlearner.settings import Settings
from streams.handoff import ModelThread
from tests.harness import Acks, labeled, make_worker, unlabeled


@pytest.fixture
def make_pipeline(tiny_model_dir, tmp_path):
    made = []

    def make(every=1000, guard=False, **env):
        env = {"CHECKPOINT_EVERY_UPDATES": every, "CHECKPOINT_KEEP_LAST": 5,
               "GUARD_ENABLED": "true" if guard else "false", "GUARD_MIN_PROBE": 1, **env}
        pipe = make_worker(tmp_path, tiny_model_dir, **env)
        made.append(pipe)
        return pipe, pipe.registry

    yield make
    for pipe in made:
        pipe.close()


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
    # The model did not change, but the label join now holds "e" for its label: the ack
    # waits for the checkpoint that holds the pending store (or it would be lost in a crash).
    await pipe.handle("feedback", unlabeled(["e"], 4), acks("4"))
    assert acks.done[-1] == "3"
    await pipe.drain()
    assert acks.done[-1] == "4"


async def test_without_the_label_join_an_unlabeled_batch_is_acked_at_once(make_pipeline):
    pipe, _ = make_pipeline(every=1, LABELS_ENABLED="false")
    acks = Acks()
    await pipe.handle("feedback", labeled(["a"]), acks("1"))
    assert acks.done == ["1"]
    await pipe.handle("feedback", unlabeled(["b"], 1), acks("2"))   # nothing changed
    assert acks.done == ["1", "2"]


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
    assert pipe2.learner.model_version == 2
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
    [(key, event)] = pipe.broker.records("model-events")
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
    pipe, reg = make_pipeline(every=1, LEARNER_MAX_GRAD_NORM=1e-12)
    # Two labels: with one, ACE's loss (new samples among their own labels) is exactly 0.
    report = await pipe.handle("feedback", labeled(["a"]) + labeled(["b"], 1, label="rate"))
    assert report.model_version == 0
    assert reg.get_sample_value("streamlearner_learner_skipped_updates_total",
                                {"task": "feedback", "reason": "grad_norm"}) == 1
    assert list(pipe.journal.entries()) == []


async def test_offline_rollback(make_pipeline):
    from lifecycle.rollback import kept_versions, rearrange

    pipe, _ = make_pipeline(every=1)
    for k in range(3):
        await pipe.handle("feedback", labeled([f"x{k}"], k))
    pipe.model.call(lambda: None)
    root = pipe.settings.checkpoint.dir
    assert [v["version"] for v in kept_versions(root)][:3] == [3, 2, 1]
    rearrange(root, 2, keep_last=5)
    pipe2, _ = make_pipeline(every=1)
    assert pipe2.learner.model_version == 2
    assert [e["version"] for e in pipe2.journal.entries()] == [1, 2]
    assert pipe2.dedup.seen_id("feedback", "x2")    # the discarded update's id stays known
    with pytest.raises(LookupError):
        rearrange(root, 42, keep_last=5)


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
    from streamlearner.settings import SettingsError
    with pytest.raises(SettingsError, match="SERVE_ADMIN_TOKEN"):
        Settings.from_env({"SERVE_ADMIN_TOKEN": "short"})


async def test_a_job_raising_stop_iteration_does_not_hang_the_caller():
    def broken():
        return next(iter([]))
    with ModelThread() as mt:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await mt.run(broken)


async def test_pipelined_batches_learn_in_order_and_a_crash_loses_none(make_pipeline, tmp_path):
    """Batch n+1 is served while batch n learns. A checkpoint written meanwhile must not hold
    n+1's ids (it was served, not learned): after a crash there, its redelivery is trained."""
    import shutil

    pipe, _ = make_pipeline(every=1)
    pipe.flow.depth = 1
    acks = Acks()
    first = await pipe.handle_pipelined("feedback", labeled(["a", "b"]), acks("0"))
    second = await pipe.handle_pipelined("feedback", labeled(["c", "d"], 2), acks("1"))
    assert first.learning.done()            # one deep: the next batch waits for it
    assert (await first.learning).trained == 2
    # "Crash" now: batch 1 was served (its ids are in serving's dedup), not learned yet.
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "ck", crashed)
    assert (await second.learning).trained == 2
    assert acks.done == ["0", "1"]           # in batch order
    pipe.model.call(lambda: None)
    assert {i for _, i in pipe.journal.trained_counts()} == {"a", "b", "c", "d"}
    pipe.close()

    shutil.rmtree(tmp_path / "ck")
    shutil.copytree(crashed, tmp_path / "ck")
    pipe2, _ = make_pipeline(every=1)
    assert pipe2.learner.model_version == 1
    again = await pipe2.handle("feedback", labeled(["c", "d"], 2), acks("1 again"))
    assert (again.duplicate, again.trained) == (0, 2)   # trained: never lost as a "duplicate"
    pipe2.model.call(lambda: None)
    counts = pipe2.journal.trained_counts()
    assert {i: n for (_, i), n in counts.items()} == {"a": 1, "b": 1, "c": 1, "d": 1}


async def test_two_deep_serving_runs_ahead_and_learns_in_batch_order(make_pipeline):
    """The default depth (2): batch n+2 is served while batches n and n+1 wait to learn; the
    third handle returns only once the first has learned. Predictions, learning and acks stay
    in batch order, and each event is predicted before it is learned."""
    pipe, _ = make_pipeline(every=1)
    assert pipe.flow.depth == 2
    acks = Acks()
    reports = []
    for n, ids in enumerate((["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"])):
        reports.append(await pipe.handle_pipelined("feedback", labeled(ids, 2 * n), acks(str(n))))
        if n >= 2:
            assert reports[n - 2].learning.done()     # at most two wait to learn
    results = [await r.learning for r in reports]
    assert [r.trained for r in results] == [2, 2, 2, 2]
    assert acks.done == ["0", "1", "2", "3"]
    assert pipe.broker.keys(pipe.settings.kafka.predictions_topic) == list("abcdefgh")
    pipe.model.call(lambda: None)
    assert [i for _, i in pipe.journal.trained_counts()] == list("abcdefgh")
    pipe.close()


async def test_two_serving_lanes_predict_side_by_side_and_keep_batch_order(make_pipeline):
    """SERVE_LANES=2: two batches are predicted at once, each on a serving thread of its own;
    admission (dedup), predictions, learning and acks stay in batch order, nothing twice."""
    import torch

    before = torch.get_num_threads()
    try:
        pipe, _ = make_pipeline(every=1, SERVE_LANES=2, LEARNER_DEVICE="cpu")
        assert pipe.flow.lanes == 2 and pipe.serving.thread.workers == 2
        acks = Acks()
        batches = [["a", "b", "c"], ["d", "e"], ["f", "a"], ["g", "h", "i"], ["j"], ["k", "l"]]
        reports, offset = [], 0
        for n, ids in enumerate(batches):
            reports.append(await pipe.handle_pipelined("feedback", labeled(ids, offset),
                                                       acks(str(n))))
            offset += len(ids)
        results = [await r.learning for r in reports]
        assert [r.trained for r in results] == [3, 2, 1, 3, 1, 2]
        assert results[2].duplicate == 1                       # "a" again, dropped in order
        assert acks.done == [str(n) for n in range(len(batches))]
        assert pipe.broker.keys(pipe.settings.kafka.predictions_topic) == list("abcdefghijkl")
        pipe.model.call(lambda: None)
        assert [i for _, i in pipe.journal.trained_counts()] == list("abcdefghijkl")
    finally:
        torch.set_num_threads(before)


async def test_a_failed_prediction_with_two_lanes_refuses_what_follows(make_pipeline,
                                                                       monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        pipe, _ = make_pipeline(every=1, SERVE_LANES=2, LEARNER_DEVICE="cpu")
        acks = Acks()
        first = await pipe.handle_pipelined("feedback", labeled(["a"]), acks("0"))
        assert (await first.learning).trained == 1

        def boom(*args, **kwargs):
            raise RuntimeError("serving bug")

        monkeypatch.setattr(pipe.serving.models.current, "score", boom)
        second = await pipe.handle_pipelined("feedback", labeled(["b"], 1), acks("1"))
        third = await pipe.handle_pipelined("feedback", labeled(["c"], 2), acks("2"))
        assert (await second.learning).failed
        assert third.refused or (await third.learning).refused
        assert acks.done == ["0"] and pipe.failed
    finally:
        torch.set_num_threads(before)


def test_worker_flow_depth_is_checked():
    from streamlearner.flows import WorkerFlow

    class Trainer:
        latch = None
        lock = None

    with pytest.raises(ValueError, match="depth"):
        WorkerFlow(None, Trainer(), depth=0)


async def test_a_failed_learning_refuses_the_batch_served_behind_it(make_pipeline, monkeypatch):
    pipe, _ = make_pipeline(every=1)
    acks = Acks()

    def boom(*args, **kwargs):
        raise RuntimeError("learner bug")

    monkeypatch.setattr(pipe.learner, "learn_many", boom)
    first = await pipe.handle_pipelined("feedback", labeled(["a"]), acks("0"))
    second = await pipe.handle_pipelined("feedback", labeled(["b"], 1), acks("1"))
    assert (await first.learning).failed
    assert second.refused or (await second.learning).refused
    assert acks.done == [] and pipe.failed
