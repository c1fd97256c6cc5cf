"""The pending store: bounds, eviction causes, early labels, corrections, duplicates,
event-time determinism and the in-memory state round trip."""

import math
from collections import Counter

import orjson
import pytest

from lifecycle.join import JoinConfig, Outcome, PendingEvent, PendingStore
from lifecycle.labels import Label

from .recorded import feed, interleavings, merged, recorded_stream

T = "feedback"


def ev(i, ts, *, task=T, text=None, label=None, predicted="a"):
    return PendingEvent(f"e{i}", task, text or f"text {i}", float(ts), predicted=predicted,
                        confidence=0.9, model_version=3, label=label)


def lab(i, y, ts, task=T):
    return Label(f"e{i}", y, task, float(ts), payload=f'{{"id": "e{i}"}}', source=("labels", 0, i))


def store(**kw):
    kw.setdefault("lateness_s", 0.0)
    tasks = kw.pop("tasks", None)
    return PendingStore(JoinConfig(**kw), tasks=tasks)


def accounted(s: PendingStore) -> bool:
    st = s.stats()
    return st["labels"] == sum(st["outcomes"].values()) + st["early_labels"]


# -- configuration ------------------------------------------------------------------------

GOOD = [{}, {"max_age_s": 1}, {"lateness_s": 0, "max_ts_jump_s": 0}, {"max_events": 1},
        {"max_bytes": 1024}, {"correction": "retrain"}, {"correction": "dead_letter"},
        {"label_wait_s": 0.5, "max_early": 1, "history": 1}]
BAD = [("max_age_s", 0), ("max_age_s", -1.0), ("max_age_s", math.inf), ("max_age_s", "60"),
       ("label_wait_s", 0), ("label_wait_s", math.nan), ("lateness_s", -1),
       ("max_ts_jump_s", -0.1), ("max_events", 0), ("max_events", 1.5), ("max_events", True),
       ("max_bytes", 1023), ("max_early", 0), ("history", 0), ("correction", "drop"),
       ("correction", "")]


@pytest.mark.parametrize("kw", GOOD)
def test_good_configs(kw):
    assert JoinConfig(**kw).asdict()["max_events"] >= 1


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_configs_name_the_setting(name, value):
    with pytest.raises(ValueError) as info:
        JoinConfig(**{name: value})
    assert str(info.value).startswith(name + " ")   # the settings layer maps it to LABELS_<NAME>


# -- joins --------------------------------------------------------------------------------

def test_label_after_its_event_joins_once_with_the_served_prediction():
    s = store(max_age_s=100)
    assert s.add_event(ev(1, 10, predicted="card_arrival")) == []
    result = s.add_label(lab(1, "card_arrival", 70))
    assert result.outcome is Outcome.joined and result.dead_letter is None
    [j] = s.take_ready()
    assert (j.text, j.label, j.predicted, j.model_version, j.delay_s, j.correct, j.kind) == \
        ("text 1", "card_arrival", "card_arrival", 3, 60.0, True, "label")
    assert s.take_ready() == [] and s.stats()["pending_events"] == 0
    assert s.add_label(lab(1, "card_arrival", 71)).outcome is Outcome.duplicate
    assert s.take_ready() == [] and accounted(s)


def test_label_before_its_event_waits_then_joins():
    s = store(label_wait_s=30)
    assert s.add_label(lab(1, "x", 5)).outcome is Outcome.early
    assert s.stats()["early_labels"] == 1
    [result] = s.add_event(ev(1, 20))
    assert result.outcome is Outcome.joined and s.take_ready()[0].delay_s == -15.0
    assert s.stats()["early_labels"] == 0 and s.stats()["early_total"] == 1 and accounted(s)


def test_early_label_expires_unmatched_by_event_time():
    s = store(label_wait_s=30)
    s.add_label(lab(1, "x", 5))
    s.add_event(ev(2, 30))
    s.add_label(lab(3, "y", 40))    # watermark min(30, 40) = 30: 5 + 30 is not below it
    assert s.take_expired() == []
    s.add_event(ev(4, 36))          # watermark 36 > 5 + 30
    [result] = s.take_expired()
    assert (result.outcome, result.dead_letter, result.label.source) == \
        (Outcome.unmatched_label, "label_unmatched", ("labels", 0, 1))
    assert accounted(s)


def test_early_cap_dead_letters_the_oldest():
    s = store(max_early=2)
    for i, ts in ((1, 5), (2, 3), (3, 9)):
        assert s.add_label(lab(i, "x", ts)).outcome is Outcome.early
    [result] = s.take_expired()
    assert result.label.id == "e2" and "max_early" in result.message
    assert s.stats()["early_labels"] == 2 and accounted(s)


def test_label_window_is_judged_by_timestamps_alone():
    s = store(max_age_s=100, label_wait_s=10, lateness_s=1000)   # nothing evicted here
    s.add_event(ev(1, 500))
    too_late = s.add_label(lab(1, "x", 601))
    too_early = s.add_label(lab(1, "x", 489))
    assert (too_late.outcome, too_late.dead_letter) == (Outcome.expired_event, "label_expired")
    assert (too_early.outcome, too_early.dead_letter) == (Outcome.unmatched_label, "label_unmatched")
    assert s.add_label(lab(1, "x", 600)).outcome is Outcome.joined   # the edge is inside
    assert accounted(s)


# -- bounds and eviction causes -------------------------------------------------------------

def test_eviction_by_age_then_the_label_is_expired_event():
    s = store(max_age_s=50)
    s.add_event(ev(1, 0))
    s.add_label(lab(9, "x", 40))
    s.add_event(ev(2, 60))           # watermark min(60, 40) = 40: e1 stays
    assert s.stats()["pending_events"] == 2
    s.add_label(lab(8, "x", 51))     # watermark 51 > 0 + 50
    st = s.stats()
    assert st["evicted"] == {"age": 1, "late": 0, "count": 0, "bytes": 0}
    assert st["pending_events"] == 1
    result = s.add_label(lab(1, "x", 45))   # late itself (behind 51); its event is gone
    assert (result.outcome, result.dead_letter) == (Outcome.expired_event, "label_expired")
    assert "age" in result.message


def test_event_arriving_out_of_the_window_is_evicted_as_late():
    s = store(max_age_s=50)
    s.add_event(ev(1, 200))
    s.add_label(lab(9, "x", 200))
    s.add_event(ev(2, 100))          # 100 + 50 < watermark 200
    st = s.stats()
    assert st["evicted"]["late"] == 1 and st["pending_events"] == 1
    assert s.add_label(lab(2, "y", 120)).outcome is Outcome.expired_event


def test_late_event_still_joins_a_label_that_waits_for_it():
    s = store(max_age_s=50, label_wait_s=500)
    s.add_label(lab(2, "y", 110))
    s.add_event(ev(1, 200))
    s.add_label(lab(9, "x", 200))
    [result] = s.add_event(ev(2, 100))
    assert result.outcome is Outcome.joined and s.stats()["evicted"]["late"] == 0


def test_eviction_by_count_takes_the_oldest_event_time():
    s = store(max_events=3)
    for i, ts in ((1, 10), (2, 5), (3, 20)):
        s.add_event(ev(i, ts))
    s.add_event(ev(4, 30))
    st = s.stats()
    assert st["evicted"]["count"] == 1 and st["pending_events"] == 3
    assert s.add_label(lab(2, "x", 31)).outcome is Outcome.expired_event
    assert s.add_label(lab(1, "x", 31)).outcome is Outcome.joined


def test_eviction_by_bytes():
    s = store(max_bytes=1024)
    for i in range(5):
        s.add_event(ev(i, i, text="x" * 250))   # 325 bytes with id, task, label and 64
    st = s.stats()
    assert st["evicted"]["bytes"] == 2 and st["pending_events"] == 3
    assert st["pending_bytes"] <= 1024


def test_watermark_is_the_slower_source():
    s = store(max_age_s=10)
    for i in range(100):             # events far ahead, no label seen yet: nothing ages out
        s.add_event(ev(i, i))
    assert s.stats()["pending_events"] == 100 and s.watermark == -math.inf
    assert s.add_label(lab(0, "x", 5)).outcome is Outcome.joined
    assert s.watermark == 5 and s.stats()["evicted"]["age"] == 0
    s.add_label(lab(50, "x", 50))
    assert s.stats()["evicted"]["age"] == 39    # e1..e39 (ts < 40); e0 joined, e50 joined


def test_one_bad_clock_does_not_flush_the_store_but_a_confirmed_jump_moves_on():
    s = store(max_age_s=100, max_ts_jump_s=1000)
    s.add_event(ev(1, 0))
    s.add_label(lab(9, "x", 0))
    s.add_label(lab(8, "x", 1e9))            # one label stamped years ahead
    s.add_event(ev(2, 1e9))
    assert s.stats()["pending_events"] == 2 and s.stats()["ts_jumps"] == 2
    s.add_label(lab(7, "x", 1e9 + 1))
    s.add_label(lab(6, "x", 1e9 + 2))        # third in a row: a real jump
    s.add_event(ev(3, 1e9 + 3))
    s.add_event(ev(4, 1e9 + 4))
    assert s.stats()["evicted"]["age"] == 1  # e1 (ts 0) aged out; e2 stays


def test_advance_settles_everything_at_the_end_of_a_replay():
    s = store()
    s.add_event(ev(1, 0))
    s.add_label(lab(2, "x", 0))
    s.advance(math.inf)
    st = s.stats()
    assert st["evicted"]["age"] == 1 and st["outcomes"]["unmatched_label"] == 1
    assert st["pending_events"] == st["early_labels"] == 0 and accounted(s)


# -- duplicates, corrections, inline labels, tasks -----------------------------------------------

def test_duplicate_event_is_ignored():
    s = store()
    s.add_event(ev(1, 0))
    s.add_event(ev(1, 0))
    assert s.stats()["duplicate_events"] == 1 and s.stats()["events"] == 1


@pytest.mark.parametrize("policy", ["ignore", "retrain", "dead_letter"])
def test_correction_policy(policy):
    s = store(correction=policy)
    s.add_event(ev(1, 0))
    s.add_label(lab(1, "old", 1))
    s.take_ready()
    result = s.add_label(lab(1, "new", 2))
    assert result.outcome is Outcome.correction
    ready = s.take_ready()
    if policy == "retrain":
        [j] = ready
        assert (j.kind, j.label, j.text, j.predicted) == ("correction", "new", "text 1", "a")
        assert result.joined == j and result.dead_letter is None
        assert s.add_label(lab(1, "new", 3)).outcome is Outcome.duplicate   # the new label now
    else:
        assert ready == []
        assert result.dead_letter == ("label_correction" if policy == "dead_letter" else None)
        assert s.add_label(lab(1, "old", 3)).outcome is Outcome.duplicate
    assert s.stats()["outcomes"]["correction"] == 1 and accounted(s)


@pytest.mark.parametrize("policy", ["ignore", "retrain", "dead_letter"])
def test_two_labels_before_the_event_are_handled_as_if_they_came_after_it(policy):
    def run(order):
        s = store(correction=policy, label_wait_s=100)
        records = {"E": ev(1, 10), "A": lab(1, "first", 1), "B": lab(1, "second", 2),
                   "C": lab(1, "first", 3)}
        outcomes = []
        for k in order:
            out = s.add_event(records[k]) if k == "E" else [s.add_label(records[k])]
            outcomes += [(r.label.ts, r.outcome.value) for r in out if r.outcome.final]
        return sorted(outcomes), [(j.label, j.kind) for j in s.take_ready()]

    assert run("EABC") == run("ABCE") == run("AEBC")


def test_inline_label_is_trained_at_once_and_remembered():
    s = store(correction="retrain")
    assert s.add_event(ev(1, 0, label="x")) == []
    [j] = s.take_ready()
    assert (j.kind, j.label, j.delay_s) == ("inline", "x", 0.0)
    assert s.add_label(lab(1, "x", 5)).outcome is Outcome.duplicate
    assert s.add_label(lab(1, "y", 6)).outcome is Outcome.correction
    assert [j.kind for j in s.take_ready()] == ["correction"]
    assert s.stats()["inline"] == 1 and s.stats()["pending_events"] == 0


def test_taskless_labels_find_their_task_or_are_ambiguous():
    s = store(tasks={"feedback": None, "market": {"up", "down"}})
    s.add_event(ev(1, 0, task="market"))
    s.add_event(ev(2, 0, task="market"))
    s.add_event(ev(2, 0, task="feedback"))
    assert s.add_label(lab(1, "up", 1, task=None)).joined.task == "market"
    result = s.add_label(lab(2, "up", 1, task=None))
    assert (result.outcome, result.dead_letter) == (Outcome.ambiguous, "label_ambiguous")
    s.add_event(ev(3, 0, task="market"))
    result = s.add_label(lab(3, "sideways", 1, task=None))
    assert (result.outcome, result.dead_letter) == (Outcome.not_allowed, "label_not_allowed")
    assert s.add_label(lab(4, "later", 1, task=None)).outcome is Outcome.early
    [result] = s.add_event(ev(4, 2, task="feedback"))
    assert result.outcome is Outcome.joined and result.task == "feedback"
    assert accounted(s)


# -- event-time determinism, accounting, state ------------------------------------------------

CONFIG = dict(max_age_s=60.0, label_wait_s=10.0, lateness_s=0.0)


def test_every_label_gets_exactly_one_final_outcome():
    events, labels = recorded_stream(n=400, seed=3)
    s = store(**CONFIG)
    outcomes, joined = feed(s, merged(events, labels))
    assert set(outcomes) == {x.payload for x in labels}
    assert all(len(v) == 1 for v in outcomes.values())
    st = s.stats()
    assert st["labels"] == len(labels) == sum(st["outcomes"].values())
    assert st["outcomes"]["joined"] == len(joined) == len({j.id for j in joined})
    for name in ("joined", "duplicate", "correction", "expired_event", "unmatched_label"):
        assert st["outcomes"][name] > 0, name   # the stream exercises every path
    assert st["events"] == st["outcomes"]["joined"] + sum(st["evicted"].values())


@pytest.mark.parametrize("policy", ["ignore", "retrain"])
def test_same_joins_at_any_speed_batching_or_interleaving(policy):
    events, labels = recorded_stream(n=400, seed=5)
    orders = {"merged": merged(events, labels),
              "events_first": [("E", e) for e in events] + [("L", x) for x in labels],
              "labels_first": [("L", x) for x in labels] + [("E", e) for e in events]}
    orders.update({f"random{k}": interleavings(events, labels, k) for k in range(4)})
    runs = {}
    for name, records in orders.items():
        for take_every in (1, 7, 10_000):
            s = store(**CONFIG, correction=policy)
            outcomes, joined = feed(s, records, take_every=take_every)
            st = s.stats()
            runs[name, take_every] = (outcomes, Counter((j.id, j.label, j.kind) for j in joined),
                                      st["outcomes"], st["evicted"])
    reference = runs["merged", 1]
    for key, run in runs.items():
        assert run == reference, key


def test_state_dict_round_trip_continues_identically():
    events, labels = recorded_stream(n=300, seed=7)
    records = merged(events, labels)
    cut = len(records) // 2
    a = store(**CONFIG, correction="retrain")
    feed(a, records[:cut], finish=False, take_every=10_000)   # leaves items in ready/outbox
    assert a.ready > 0
    b = store(**CONFIG, correction="retrain")
    b.load_state_dict(orjson.loads(orjson.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    assert feed(a, records[cut:]) == feed(b, records[cut:])
    assert a.stats() == b.stats()


def test_load_state_dict_applies_smaller_bounds_and_counts_them():
    a = store()
    for i in range(10):
        a.add_event(ev(i, i))
    b = store(max_events=4)
    b.load_state_dict(a.state_dict())
    assert b.stats()["pending_events"] == 4 and b.stats()["evicted"]["count"] == 6


@pytest.mark.parametrize("bad", [{}, {"format": 99}, {"format": 1, "pending": [[["x"], 1]]}, []])
def test_load_state_dict_rejects_foreign_state(bad):
    s = store()
    s.add_event(ev(1, 0))
    with pytest.raises(ValueError):
        s.load_state_dict(bad)
