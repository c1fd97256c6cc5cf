import json
import re

import pytest

from streams.dedup import BoundedSeen, Deduplicator

# --- BoundedSeen --------------------------------------------------------------

LRU = [
    # (case id, capacity, keys added in order, add() results, state afterwards, oldest first)
    ("fills_up", 3, "abc", [False, False, False], ["a", "b", "c"]),
    ("evicts_oldest", 2, "abc", [False, False, False], ["b", "c"]),
    ("repeat_refreshes", 2, "abac", [False, False, True, False], ["a", "c"]),
    ("evicted_is_new_again", 2, "abca", [False, False, False, False], ["c", "a"]),
    ("capacity_one", 1, "aab", [False, True, False], ["b"]),
    ("repeats_do_not_grow", 3, "aaaa", [False, True, True, True], ["a"]),
]


@pytest.mark.parametrize(
    "capacity, keys, results, state", [c[1:] for c in LRU], ids=[c[0] for c in LRU]
)
def test_bounded_seen_lru(capacity, keys, results, state):
    seen = BoundedSeen(capacity)
    assert [seen.add(k) for k in keys] == results
    assert seen.state() == state
    assert len(seen) == len(state) <= capacity
    assert all(k in seen for k in state)
    assert not any(k in seen for k in set(keys) - set(state))


def test_bounded_seen_memory_is_bounded():
    seen = BoundedSeen(100)
    for i in range(10_000):
        seen.add(str(i))
    assert len(seen) == 100
    assert seen.state() == [str(i) for i in range(9_900, 10_000)]


def test_contains_does_not_refresh():
    seen = BoundedSeen(2)
    seen.add("a")
    seen.add("b")
    assert "a" in seen
    seen.add("c")
    assert seen.state() == ["b", "c"]


@pytest.mark.parametrize(
    "capacity, keys, state",
    [
        (3, ["a", "b"], ["a", "b"]),
        (2, ["a", "b", "c", "d"], ["c", "d"]),  # shrunk: the oldest go
        (3, [], []),
    ],
    ids=["fits", "shrinks", "empty"],
)
def test_bounded_seen_from_state(capacity, keys, state):
    assert BoundedSeen.from_state(capacity, keys).state() == state


def test_bounded_seen_round_trip_keeps_recency():
    seen = BoundedSeen(3)
    for key in "abca":
        seen.add(key)
    restored = BoundedSeen.from_state(3, seen.state())
    restored.add("d")  # must evict "b", the least recent
    assert restored.state() == ["c", "a", "d"]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "3", None])
def test_bounded_seen_rejects_bad_capacity(capacity):
    with pytest.raises(ValueError, match="capacity"):
        BoundedSeen(capacity)


# --- Deduplicator -------------------------------------------------------------


def test_seen_id_per_task():
    d = Deduplicator(id_capacity=10, text_window=10)
    calls = [("feedback", "1"), ("feedback", "1"), ("market", "1"), ("feedback", "2"),
             ("market", "1")]
    assert [d.seen_id(t, i) for t, i in calls] == [False, True, False, False, True]


def test_seen_id_window():
    d = Deduplicator(id_capacity=2)
    assert [d.seen_id("feedback", i) for i in ["a", "b", "c", "a"]] == [False] * 4


def test_repeat_text_per_task_and_window():
    d = Deduplicator(id_capacity=10, text_window=2)
    calls = [
        ("feedback", "hello", False),
        ("feedback", "hello", True),
        ("market", "hello", False),
        ("feedback", "x", False),
        ("feedback", "y", False),  # window of 2: "hello" falls out
        ("feedback", "hello", False),
    ]
    assert [d.repeat_text(t, text) for t, text, _ in calls] == [r for *_, r in calls]


def test_text_window_zero_disables_text_dedup():
    d = Deduplicator(text_window=0)
    assert [d.repeat_text("feedback", "same") for _ in range(3)] == [False] * 3
    assert d.state_dict()["texts"] == {}


def test_id_and_text_checks_are_independent():
    d = Deduplicator()
    assert d.seen_id("feedback", "hello") is False
    assert d.repeat_text("feedback", "hello") is False


def test_texts_are_stored_as_hashes():
    d = Deduplicator()
    d.repeat_text("feedback", "my secret complaint")
    [key] = d.state_dict()["texts"]["feedback"]
    assert re.fullmatch(r"[0-9a-f]{32}", key)


def test_state_dict_round_trips_through_json():
    d = Deduplicator(id_capacity=3, text_window=2)
    for i in "abcd":
        d.seen_id("feedback", i)
    d.seen_id("market", "m")
    d.repeat_text("feedback", "t1")
    d.repeat_text("feedback", "t2")

    restored = Deduplicator(id_capacity=3, text_window=2)
    restored.load_state_dict(json.loads(json.dumps(d.state_dict())))
    assert restored.state_dict() == d.state_dict()
    assert restored.seen_id("feedback", "d") is True
    assert restored.seen_id("feedback", "a") is False  # evicted before saving
    assert restored.seen_id("market", "m") is True
    assert restored.repeat_text("feedback", "t1") is True


def test_load_state_dict_applies_current_capacities():
    d = Deduplicator(id_capacity=5, text_window=5)
    for i in "abcde":
        d.seen_id("feedback", i)
        d.repeat_text("feedback", i)
    smaller = Deduplicator(id_capacity=2, text_window=0)
    smaller.load_state_dict(d.state_dict())
    assert smaller.state_dict() == {"ids": {"feedback": ["d", "e"]}, "texts": {}}


def test_load_state_dict_replaces_existing_state():
    d = Deduplicator()
    d.seen_id("feedback", "old")
    d.load_state_dict({"ids": {}, "texts": {}})
    assert d.seen_id("feedback", "old") is False


@pytest.mark.parametrize(
    "state", [{}, {"ids": {}}, {"ids": [], "texts": {}}, {"ids": {"f": 3}, "texts": {}}],
    ids=["empty", "no_texts", "ids_not_a_mapping", "keys_not_a_list"],
)
def test_load_state_dict_rejects_malformed_state(state):
    with pytest.raises(ValueError, match="state"):
        Deduplicator().load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"id_capacity": 0}, "id_capacity"),
        ({"id_capacity": 2.0}, "id_capacity"),
        ({"text_window": -1}, "text_window"),
        ({"text_window": None}, "text_window"),
    ],
)
def test_deduplicator_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Deduplicator(**kwargs)
