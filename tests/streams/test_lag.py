from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.app import read_lag


class FakeConsumer:
    def __init__(self, highwaters, committed):
        self.highwaters, self._committed_offset = highwaters, committed

    def assignment(self):
        return set(self.highwaters)

    def highwater(self, tp):
        return self.highwaters[tp]


class TP(tuple):
    topic = property(lambda self: self[0])
    partition = property(lambda self: self[1])


def test_lag_is_highwater_minus_committed_for_source_partitions():
    a, b, internal = TP(("src", 0)), TP(("src", 1)), TP(("app-__assignor", 0))
    consumer = FakeConsumer({a: 120, b: None, internal: 9}, {a: 100})
    assert read_lag(consumer, {"src"}) == {("src", 0): 20}
    assert read_lag(FakeConsumer({a: 7}, {}), {"src"}) == {("src", 0): 7}


def test_read_lag_never_raises():
    class Broken:
        def assignment(self):
            raise RuntimeError("not started")
    assert read_lag(Broken(), {"src"}) == {}


def test_lag_gauge_drops_unassigned_partitions():
    reg = CollectorRegistry()
    m = Metrics(registry=reg)
    m.observe_lag({("src", 0): 5, ("src", 1): 3})
    m.observe_lag({("src", 1): 0})
    get = reg.get_sample_value
    assert get("streamlearner_stream_consumer_lag_messages", {"topic": "src", "partition": "0"}) is None
    assert get("streamlearner_stream_consumer_lag_messages", {"topic": "src", "partition": "1"}) == 0
