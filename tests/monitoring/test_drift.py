"""Drift detectors on synthetic streams: they fire on a shift, stay quiet without one."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.drift import (ConceptDrift, EmbeddingDrift, LabelShift, chi2_test, mmd_test)


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_concept_fires_on_error_rise_within_a_few_hundred_events(detector):
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.random(2000) < 0.1, rng.random(1000) < 0.6])
    d = ConceptDrift(detector)
    hits = [t for t, e in enumerate(errors) if d.update(e, task="t", event=t).drift_detected]
    assert hits and 2000 <= hits[0] < 2300, hits[:3]
    assert d.last.kind == "concept" and d.last.detector == detector and d.last.task == "t"


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_concept_ignores_a_learner_getting_better(detector):
    rng = np.random.default_rng(1)
    errors = np.concatenate([rng.random(1000) < 0.7, rng.random(3000) < 0.1])
    d = ConceptDrift(detector)
    assert not any(d.update(e).drift_detected for e in errors)


def test_concept_respects_grace():
    d = ConceptDrift("adwin", grace=10_000)
    assert not any(d.update(e).drift_detected for e in [0] * 500 + [1] * 500)


def test_concept_rejects_unknown_detector():
    with pytest.raises(ValueError, match="detector"):
        ConceptDrift("ddm")


def test_mmd_calibrated_under_the_null_and_powerful_under_a_shift():
    rng = np.random.default_rng(2)
    p_null = [mmd_test(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), 200, rng).p_value
              for _ in range(20)]
    assert np.mean(np.array(p_null) <= 0.05) <= 0.2
    shifted = mmd_test(rng.normal(size=(60, 8)), rng.normal(0.8, size=(60, 8)), 200, rng)
    assert shifted.p_value < 0.01 and shifted.statistic > 0


def test_chi2_single_class_is_no_evidence():
    assert chi2_test([0, 0, 0], [0, 0], 50).p_value == 1.0


def test_embedding_drift_windows_reset_after_detection():
    rng = np.random.default_rng(3)
    d = EmbeddingDrift(reference=100, window=60, every=20, p_value=0.01, permutations=200)
    fired = []
    for t in range(400):
        x = rng.normal(2.0 if t >= 200 else 0.0, size=(1, 4))
        if d.update(x, task="t", event=t).drift_detected:
            fired.append(t)
    assert fired and 200 <= fired[0] < 280
    assert d.last.kind == "data" and d.last.p_value <= 0.01
    assert d.last.reference_size == 100 and d.last.window_size == 60


def test_label_shift_quiet_when_stationary():
    rng = np.random.default_rng(4)
    d = LabelShift(reference=200, window=100, every=25, p_value=0.001, permutations=1000)
    labels = rng.choice(list("abcdefghij"), size=1500)
    assert not any(d.update([x]).drift_detected for x in labels)
    assert 0.0 <= d.distance() <= 1.0


@pytest.mark.parametrize("shift", [0.0, 0.15, 0.3, 1.0])
def test_sequential_tests_decide_as_the_full_ones(shift):
    """Stopping once p is sure to exceed the threshold never changes the decision."""
    from monitoring.drift import chi2_test, mmd_test

    for seed in range(6):
        data = np.random.default_rng(seed)
        x, y = data.normal(size=(60, 5)), data.normal(shift, size=(60, 5))
        full = mmd_test(x, y, 400, np.random.default_rng(seed))
        early = mmd_test(x, y, 400, np.random.default_rng(seed), stop_above=0.01)
        assert (full.p_value <= 0.01) == (early.p_value <= 0.01)
        assert full.statistic == early.statistic
        if early.p_value <= 0.01:                 # ran to the end: the same p-value
            assert early.p_value == full.p_value
        ref = data.integers(0, 4, 80)
        rec = np.minimum(data.integers(0, 4, 80) + data.binomial(1, min(shift, 1.0), 80), 3)
        full = chi2_test(ref, rec, 400, np.random.default_rng(seed))
        early = chi2_test(ref, rec, 400, np.random.default_rng(seed), stop_above=0.01)
        assert (full.p_value <= 0.01) == (early.p_value <= 0.01)


def test_with_no_drift_a_sequential_test_stops_after_its_first_ten_permutations():
    from monitoring.drift import _sequential_p_value

    drawn: list[int] = []

    def half_exceed(size):   # no drift: about every other permuted statistic is larger
        drawn.append(size)
        return np.arange(size) % 2 * 2.0

    assert _sequential_p_value(1.0, half_exceed, 1000, stop_above=0.001) == 6 / 11
    assert drawn == [10]
    drawn.clear()   # a drift: nothing exceeds, every permutation is drawn (10, 40, then 50s)
    assert _sequential_p_value(1.0, lambda n: drawn.append(n) or np.zeros(n), 1000, 0.001) \
        == 1 / 1001
    assert drawn[:3] == [10, 40, 50] and sum(drawn) == 1000


def test_mmd_reference_reused_across_tests_gives_the_same_result():
    from monitoring.drift import MMDReference

    data = np.random.default_rng(7)
    x, y = data.normal(size=(80, 6)), data.normal(0.5, size=(40, 6))
    cached = MMDReference(x)
    for seed in range(3):
        fresh = mmd_test(x, y, 200, np.random.default_rng(seed))
        again = mmd_test(cached, y, 200, np.random.default_rng(seed))
        assert again.p_value == fresh.p_value
        assert again.statistic == pytest.approx(fresh.statistic, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 rows"):
        MMDReference(x[:1])


def test_embedding_drift_rebuilds_its_reference_kernel_when_the_reference_changes():
    data = np.random.default_rng(8)
    d = EmbeddingDrift(reference=50, window=30, every=10, p_value=0.001, permutations=1000)
    d.update(data.normal(size=(80, 4)))
    first = d._reference
    assert first is not None and len(first) == 50
    d.update(data.normal(size=(10, 4)))
    assert d._reference is first                       # reused while the reference holds
    d.replace_reference(data.normal(size=(50, 4)) + 3.0)
    assert d._reference is None                        # re-encoded rows: a new kernel
    d.update(data.normal(size=(10, 4)) + 3.0)
    assert d._reference is not first
    d.reset_reference()
    assert d._reference is None
