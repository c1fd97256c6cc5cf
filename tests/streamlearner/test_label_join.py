"""Late labels where the model learns (worker batch path and the split trainer), no Kafka:
joined once, dead-lettered with coordinates when they cannot join, scored against the
prediction served when the event arrived, and kept across a crash."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.harness import (Acks, label_records, make_split, make_worker, raw, sample_events)

T0 = 1_700_000_000.0


def events(ids, offset=0, ts=T0, topic="customer-feedback", **extra):
    return [raw(offset + k, {"id": i, "text": f"text of {i}", "ts": ts + k, **extra}, topic)
            for k, i in enumerate(ids)]


@pytest.fixture
def make(tiny_model_dir, tmp_path):
    made = []

    def build(**env):
        env = {"LEARNER_MODE": "head", "CHECKPOINT_EVERY_UPDATES": 1, "GUARD_ENABLED": "false",
               "LABELS_LABEL_WAIT_S": 50, "LABELS_MAX_AGE_S": 500, "LABELS_LATENESS_S": 0,
               **env}
        h = make_worker(tmp_path, tiny_model_dir, **env)
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()


def trained(h):
    h.model.call(lambda: None)
    return {i: n for (_, i), n in h.journal.trained_counts().items()}


async def test_late_labels_join_train_once_and_score_the_served_prediction(make):
    h = make()
    acks = Acks()
    await h.handle("feedback", events(["a", "b", "c"]), acks("events"))
    assert trained(h) == {}
    report = await h.handle_labels(label_records([("a", "lost"), ("b", "rate")],
                                                 ts=T0 + 30), acks("labels"))
    assert report.trained == 2
    assert trained(h) == {"a": 1, "b": 1}
    # The same labels again (a producer retry) and one for c: only c trains.
    await h.handle_labels(label_records([("a", "lost"), ("b", "rate"), ("c", "lost")], 2,
                                        ts=T0 + 40), acks("again"))
    assert trained(h) == {"a": 1, "b": 1, "c": 1}
    get = h.registry.get_sample_value
    assert get("streamlearner_labels_outcomes_total", {"task": "feedback", "outcome": "joined"}) == 3
    assert get("streamlearner_labels_outcomes_total", {"task": "feedback", "outcome": "duplicate"}) == 2
    # Served before any learning: version 0 predicted nothing right.
    assert get("streamlearner_learner_delayed_prequential_accuracy_ratio",
               {"task": "feedback"}) == 0.0
    assert get("streamlearner_labels_delay_seconds_count", {"task": "feedback"}) == 3
    assert get("streamlearner_labels_delay_seconds_sum", {"task": "feedback"}) == \
        pytest.approx(30 + 29 + 38)
    assert acks.done == ["events", "labels", "again"]
    assert h.dead_letters() == []


async def test_a_label_before_its_event_trains_when_the_event_comes(make):
    h = make()
    await h.handle_labels(label_records([("x", "lost")], ts=T0))
    assert trained(h) == {}
    report = await h.handle("feedback", events(["x"], ts=T0 + 5))
    assert report.trained == 1 and trained(h) == {"x": 1}


async def test_unmatched_and_bad_labels_are_dead_lettered_with_coordinates(make):
    h = make()
    await h.handle("feedback", events(["a"], ts=T0))
    await h.handle_labels(label_records([("ghost", "lost")], 0, ts=T0)
                          + [raw(1, b"{not json", "labels"),
                             raw(2, {"id": "a", "label": "lost", "task": "weather"}, "labels")])
    reasons = {(dl.topic, dl.offset, dl.reason) for _, dl in h.dead_letters()}
    assert reasons == {("labels", 1, "invalid_json"), ("labels", 2, "unknown_task")}
    # Event time moves past the ghost's wait (50 s): it expires unmatched, once.
    await h.handle("feedback", events(["b"], 1, ts=T0 + 100))
    await h.handle_labels(label_records([("b", "rate")], 3, ts=T0 + 101))
    letters = [dl for _, dl in h.dead_letters()]
    unmatched = [dl for dl in letters if dl.reason == "label_unmatched"]
    assert [(dl.topic, dl.partition, dl.offset) for dl in unmatched] == [("labels", 0, 0)]
    assert json.loads(unmatched[0].payload)["id"] == "ghost"
    assert trained(h) == {"b": 1}
    get = h.registry.get_sample_value
    assert get("streamlearner_labels_outcomes_total", {"task": "none", "outcome": "invalid"}) == 2
    assert get("streamlearner_labels_outcomes_total",
               {"task": "none", "outcome": "unmatched_label"}) == 1


async def test_labels_outside_a_fixed_set_are_refused(make, tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text('[tasks.tickets]\ntopics = ["tickets", "chat"]\nlabels = ["lost", "rate"]\n')
    h = make(KAFKA_TASKS=str(path))
    await h.handle("tickets", events(["a"], topic="chat") +
                   [raw(1, {"id": "z", "text": "weather", "label": "sunny"}, "tickets")])
    assert [(dl.topic, dl.reason) for _, dl in h.dead_letters()] == \
        [("tickets", "label_not_allowed")]
    await h.handle_labels(label_records([("a", "sunny")], ts=T0 + 1))
    assert [dl.reason for _, dl in h.dead_letters()][-1] == "label_not_allowed"
    await h.handle_labels(label_records([("a", "rate")], 1, ts=T0 + 2))
    assert trained(h) == {"a": 1}


async def test_pending_events_survive_a_crash(make, tmp_path):
    h = make(CHECKPOINT_EVERY_UPDATES=1000, CHECKPOINT_MAX_PENDING_EVENTS=1)
    acks = Acks()
    await h.handle("feedback", events(["a", "b"]), acks("1"))
    assert acks.done == ["1"]            # checkpointed: the store holds a and b durably
    await h.handle("feedback", events(["c"], 2, ts=T0 + 2), acks("2"))
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "ck", crashed)
    h.close()
    shutil.rmtree(tmp_path / "ck")
    shutil.copytree(crashed, tmp_path / "ck")
    h2 = make(CHECKPOINT_EVERY_UPDATES=1000, CHECKPOINT_MAX_PENDING_EVENTS=1)
    assert h2.trainer.labels.stats()["pending_events"] >= 2
    await h2.handle_labels(label_records([("a", "lost"), ("b", "rate")], ts=T0 + 10))
    assert trained(h2) == {"a": 1, "b": 1}


async def test_the_split_trainer_joins_labels_to_samples(tiny_model_dir, tmp_path):
    from streamlearner.flows import LabelFlow

    serve, train, broker, reg = make_split(tmp_path, tiny_model_dir, CHECKPOINT_EVERY_UPDATES=1)
    await serve.handle("feedback", events(["a", "b"]))
    await train.handle("samples", sample_events(broker))
    report = await LabelFlow(train.trainer).handle(
        "labels", label_records([("a", "lost"), ("b", "rate"), ("zz", "x")], ts=T0 + 9))
    assert report.trained == 2
    train.trainer.thread.call(lambda: None)
    counts = {i: n for (_, i), n in train.trainer.durability.journal.trained_counts().items()}
    assert counts == {"a": 1, "b": 1}
    assert reg.get_sample_value("streamlearner_labels_waiting") == 1   # zz waits for its event
