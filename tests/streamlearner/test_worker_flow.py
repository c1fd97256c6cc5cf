"""The all-in-one worker's batch path: the real serving half and trainer (tiny model),
outputs in memory (tests/harness.py)."""

from __future__ import annotations

import pytest

from tests.harness import make_worker, raw


@pytest.fixture
def make(tiny_model_dir, tmp_path):
    made = []

    def build(**env):
        h = make_worker(tmp_path, tiny_model_dir, **env)
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()


async def test_batch_outcomes(make):
    pipe = make(STREAM_DEDUP_TEXT_WINDOW=100)
    batch = [
        raw(0, {"id": "a", "text": "my card is lost", "label": "lost"}),
        raw(1, b"\xff\xfe"),
        raw(2, {"id": "b", "text": "what is the rate", "label": "rate"}),
        raw(3, {"id": "a", "text": "my card is lost", "label": "lost"}),   # same id again
        raw(4, {"id": "c", "text": "my  card is <b>lost</b>", "label": "lost"}),  # same cleaned text
        raw(5, {"id": "d", "text": "no label here"}),
    ]
    report = await pipe.handle("feedback", batch)
    assert (report.accepted, report.invalid, report.duplicate, report.trained) == (4, 1, 1, 2)
    preds = pipe.predictions()
    assert [k for k, _ in preds] == ["a", "b", "c", "d"]
    assert all(r.label is None for _, r in preds)   # nothing learned before the first predict
    [(key, dl)] = pipe.dead_letters()
    assert key == "customer-feedback:0:1" and dl.reason == "invalid_utf8" and dl.offset == 1
    assert dl.payload_encoding == "base64"
    get = pipe.registry.get_sample_value
    assert get("streamlearner_stream_events_total",
               {"topic": "customer-feedback", "outcome": "accepted"}) == 4
    assert get("streamlearner_stream_events_total",
               {"topic": "customer-feedback", "outcome": "duplicate"}) == 1
    assert get("streamlearner_stream_dead_letters_total",
               {"topic": "customer-feedback", "reason": "invalid_utf8"}) == 1
    assert get("streamlearner_stream_repeat_texts_total", {"task": "feedback"}) == 1
    assert get("streamlearner_learner_samples_total", {"task": "feedback", "kind": "new"}) == 2
    assert get("streamlearner_learner_model_version") == 1 == report.model_version
    assert get("streamlearner_learner_freshness_seconds_count", {"task": "feedback"}) == 2
    assert get("streamlearner_learner_prequential_accuracy_ratio", {"task": "feedback"}) == 0.0


async def test_the_next_batch_is_served_by_the_version_that_learned_the_last(make):
    pipe = make(LEARNER_MODE="head")
    await pipe.handle("feedback", [raw(0, {"id": "a", "text": "my card is lost",
                                           "label": "lost"})])
    assert pipe.serving.models.model_version == pipe.learner.model_version == 1
    await pipe.handle("feedback", [raw(1, {"id": "b", "text": "card lost again"})])
    (_, pred), = pipe.predictions()[-1:]
    assert pred.model_version == 1 and pred.label == "lost"


async def test_checkpoint_when_due_and_restore(make):
    pipe = make(CHECKPOINT_EVERY_UPDATES=1)
    await pipe.handle("market", [raw(0, {"id": "m1", "text": "profit rose", "label": "positive"},
                                     topic="market-events")])
    assert pipe.checkpoints.latest() is not None
    pipe2 = make()
    assert pipe2.learner.model_version == 1
    assert pipe2.registry.get_sample_value("streamlearner_learner_model_version") == 1
    assert pipe2.dedup.seen_id("market", "m1")   # dedup state came back with the checkpoint
    assert pipe2.serving.models.model_version == 1   # the serving copy starts there too


async def test_unexpected_error_is_dead_lettered_not_lost(make, monkeypatch):
    pipe = make()
    import streams.admit as mod

    def broken(event):
        raise KeyError("bug")
    monkeypatch.setattr(mod, "clean_event", broken)
    report = await pipe.handle("feedback", [raw(7, {"id": "x", "text": "hi"})])
    assert report.invalid == 1
    [(_, dl)] = pipe.dead_letters()
    assert dl.reason == "internal_error" and dl.offset == 7


async def test_the_idle_timer_brings_the_serving_copy_to_the_last_update(make):
    """lora mode refreshes the serving copy at the publishing cadence: updates between two
    ticks reach it when the stream goes quiet, not only at the next batch."""
    import asyncio

    pipe = make(LEARNER_MODE="lora", MODELS_PUBLISH_EVERY_S=3600, MODELS_PUBLISH_EVERY_UPDATES=0,
                CHECKPOINT_IDLE_S=0.05)
    await pipe.handle("feedback", [raw(0, {"id": "a", "text": "my card is lost", "label": "lost"})])
    first = pipe.serving.models.model_version
    await pipe.handle("feedback", [raw(1, {"id": "b", "text": "what is the rate", "label": "rate"})])
    assert pipe.learner.model_version == 2 and pipe.serving.models.model_version == first < 2
    await asyncio.sleep(0.06)
    await pipe.flush_if_idle()
    assert pipe.serving.models.model_version == 2


async def test_a_learned_batch_takes_two_model_thread_jobs_in_head_mode(make):
    """Head mode with drift detection: the cached features' offer and the drift test are one
    job, the update and the serving copy's artifact another (each job is two thread wake-ups
    on a machine the encoders keep busy); the serving copy still follows the update."""
    pipe = make(LEARNER_MODE="head", DRIFT_ENABLED="true")
    pipe.trainer.publisher.send = None   # no topic publication (its own job, once a second)
    jobs: list[str] = []
    run = pipe.model.run

    async def recorded(fn, *args, **kwargs):
        jobs.append(getattr(fn, "__qualname__", repr(fn)))
        return await run(fn, *args, **kwargs)

    pipe.model.run = recorded
    await pipe.handle("feedback", [raw(i, {"id": f"e{i}", "text": f"my card {i} is lost",
                                           "label": "lost" if i % 2 else "found"})
                                   for i in range(6)])
    assert pipe.serving.models.model_version == pipe.learner.model_version == 1
    assert len(jobs) == 2 and "_update_job" in jobs[1], jobs
    assert "artifact_from_learner" not in " ".join(jobs)


async def test_a_stale_prebuilt_artifact_is_built_again(make):
    """An artifact built with the update is used only while it is the live version's (a
    guard's rollback in between moves the learner elsewhere)."""
    from lifecycle.publishing import artifact_from_learner

    pipe = make(LEARNER_MODE="head")
    await pipe.handle("feedback", [raw(0, {"id": "a", "text": "my card is lost",
                                           "label": "lost"})])
    publisher = pipe.trainer.publisher
    stale = pipe.model.call(artifact_from_learner, pipe.learner)
    await pipe.handle("feedback", [raw(1, {"id": "b", "text": "card found", "label": "found"})])
    assert pipe.learner.model_version == 2 and stale.version == 1
    await publisher.refresh_local(pipe.learner, stale)
    assert publisher.local_version == 2 and pipe.serving.models.model_version == 2
