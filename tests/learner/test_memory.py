import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learner import MemoryItem, ReplayMemory


def items(task, label, n, start=0):
    return [MemoryItem(task, f"{task}/{label}/{i}", label) for i in range(start, start + n)]


def test_fills_then_stays_at_capacity():
    memory = ReplayMemory(capacity=10, seed=0)
    memory.add(items("t", "a", 7))
    assert len(memory) == 7
    memory.add(items("t", "a", 7, start=7))
    assert len(memory) == 10
    assert memory.class_sizes() == {("t", "a"): 10}


def test_rejects_bad_capacity():
    with pytest.raises(ValueError, match="^capacity"):
        ReplayMemory(capacity=0)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 40),
    weights=st.lists(st.integers(1, 20), min_size=1, max_size=8),
    n=st.integers(0, 400),
    seed=st.integers(0, 2**16),
)
def test_capacity_never_exceeded_and_balance(capacity, weights, n, seed):
    rng = random.Random(seed)
    memory = ReplayMemory(capacity=capacity, seed=seed)
    classes = [(f"task{i % 2}", f"label{i}") for i in range(len(weights))]
    seen = Counter()
    for step in range(n):
        c = rng.choices(classes, weights=weights)[0]
        seen[c] += 1
        memory.add([MemoryItem(c[0], f"x{step}", c[1])])
        sizes = memory.class_sizes()
        assert len(memory) == sum(sizes.values()) <= capacity
        assert len(memory) == min(step + 1, capacity)
        # CBRS balance: once every class was offered more than its fair share, sizes
        # differ by at most one.
        if len(seen) == len(classes) and all(s > capacity / len(classes) for s in seen.values()):
            values = [sizes.get(c, 0) for c in classes]
            assert max(values) - min(values) <= 1, (values, dict(seen))
    assert memory.sizes() == {
        t: sum(v for (tt, _), v in memory.class_sizes().items() if tt == t) for t in {t for t, _ in memory.class_sizes()}
    }


def test_minority_class_claims_space_from_majority():
    memory = ReplayMemory(capacity=20, seed=1)
    memory.add(items("t", "big", 1000))
    memory.add(items("t", "small", 5))
    assert memory.class_sizes() == {("t", "big"): 15, ("t", "small"): 5}


def test_reservoir_is_uniform_within_a_class():
    # Algorithm R inside the class: each of the n items ends up stored with prob. m/n.
    capacity, n, runs = 10, 100, 2000
    kept = Counter()
    for run in range(runs):
        memory = ReplayMemory(capacity=capacity, seed=run)
        memory.add(items("t", "a", n))
        kept.update(item.text for item in memory.sample(capacity))
    expected = runs * capacity / n  # 200 per item
    chi2 = sum((kept[f"t/a/{i}"] - expected) ** 2 / expected for i in range(n))
    # 99 degrees of freedom: P(chi2 > 148.2) = 0.001; the test is seeded, so not flaky.
    assert chi2 < 148.2, chi2


def test_sample_is_distinct_capped_and_empty_safe():
    memory = ReplayMemory(capacity=50, seed=0)
    assert memory.sample(5) == []
    memory.add(items("t", "a", 8) + items("u", "b", 4))
    got = memory.sample(100)
    assert len(got) == 12 and len({it.text for it in got}) == 12
    assert memory.sample(0) == [] and memory.sample(-3) == []
    assert memory.sizes() == {"t": 8, "u": 4}


def learned(memory):
    """State minus the constructor's own seed (the RNG state itself is compared)."""
    return {k: v for k, v in memory.state_dict().items() if k != "seed"}


def test_state_round_trip_continues_identically():
    a = ReplayMemory(capacity=30, seed=7)
    a.add(items("t", "x", 50) + items("t", "y", 5) + [MemoryItem("u", "with logits", "z", (0.5, -1.25))])
    a.sample(7)
    state = json.loads(json.dumps(a.state_dict()))  # must be plain JSON
    b = ReplayMemory(capacity=30, seed=999)
    b.load_state_dict(state)
    assert learned(b) == learned(a)
    assert b.seen() == a.seen()
    for round_ in range(5):
        batch = items("t", "y", 10, start=100 + 10 * round_) + items("v", "w", 3, start=10 * round_)
        a.add(batch)
        b.add(batch)
        assert a.sample(9) == b.sample(9)
    assert learned(a) == learned(b)


def test_load_into_smaller_capacity_evicts_from_largest_classes():
    a = ReplayMemory(capacity=12, seed=0)
    a.add(items("t", "x", 8) + items("t", "y", 3) + items("u", "z", 1))
    b = ReplayMemory(capacity=6, seed=0)
    b.load_state_dict(a.state_dict())
    sizes = b.class_sizes()
    assert len(b) == 6 and sizes[("u", "z")] == 1
    assert sorted([sizes[("t", "x")], sizes[("t", "y")]]) == [2, 3]


def test_logits_survive_round_trip():
    a = ReplayMemory(capacity=3, seed=0)
    a.add([MemoryItem("t", "x", "l", (1.0, 2.5))])
    b = ReplayMemory(capacity=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.sample(1) == [MemoryItem("t", "x", "l", (1.0, 2.5))]
