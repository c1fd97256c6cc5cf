import re

from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics, SlidingAccuracy

NAME = re.compile(r"^streamlearner_(stream|learner|serve|train|labels|tracking)_[a-z_]+$")


def make():
    reg = CollectorRegistry()
    return reg, Metrics(registry=reg, topics=["customer-feedback"], tasks=["feedback"],
                        reasons=["invalid_json"])


def test_names_follow_house_convention():
    reg, _ = make()
    names = {m.name for m in reg.collect()}
    assert names, "no metrics registered"
    for name in names:
        assert NAME.match(name), name
    for m in reg.collect():
        if m.type == "counter":
            assert not m.name.endswith("_total")  # client strips it; samples carry it
        if m.type == "histogram":
            assert m.name.endswith(("_seconds", "_samples")), m.name


def test_label_sets_are_preinitialised():
    reg, _ = make()
    assert reg.get_sample_value("streamlearner_stream_events_total",
                                {"topic": "customer-feedback", "outcome": "invalid"}) == 0.0
    assert reg.get_sample_value("streamlearner_stream_dead_letters_total",
                                {"topic": "customer-feedback", "reason": "invalid_json"}) == 0.0
    assert reg.get_sample_value("streamlearner_learner_updates_total", {"task": "feedback"}) == 0.0


def test_prequential_gauge_is_a_sliding_window():
    reg, m = make()
    m._window = 4
    m._accuracy.clear()
    m.observe_prequential("feedback", [False, False, True, True, True, True])
    assert reg.get_sample_value("streamlearner_learner_prequential_accuracy_ratio",
                                {"task": "feedback"}) == 1.0


def test_sliding_accuracy_empty_is_zero():
    assert SlidingAccuracy(3).value == 0.0


def test_drift_and_forgetting_series_are_preinitialised():
    reg = CollectorRegistry()
    Metrics(registry=reg, tasks=["feedback"],
            drift_detectors=[("concept", "page_hinkley"), ("data", "mmd"), ("label", "chi2")])
    get = reg.get_sample_value
    assert get("streamlearner_learner_drift_detections_total",
               {"task": "feedback", "kind": "concept", "detector": "page_hinkley"}) == 0.0
    assert get("streamlearner_learner_drift_p_value", {"task": "feedback", "kind": "data"}) == 1.0
    assert get("streamlearner_learner_forgetting_ratio", {"task": "feedback"}) == 0.0
