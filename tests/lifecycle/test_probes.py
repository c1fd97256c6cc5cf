from lifecycle.probes import ProbeSets


class FakeLearner:
    def __init__(self, answer):
        self.answer = answer

    def predict_many(self, task, texts):
        from types import SimpleNamespace
        return [SimpleNamespace(label=self.answer) for _ in texts]


def test_probe_holds_out_by_id_hash_until_full():
    p = ProbeSets(size=3, every=2)
    taken = [i for i in range(100) if p.take("t", f"id-{i}", f"text {i}", "x")]
    assert len(taken) == 3
    again = ProbeSets(size=3, every=2)   # a redelivery makes the same choice
    assert [i for i in range(100) if again.take("t", f"id-{i}", f"text {i}", "x")] == taken


def test_forgetting_is_drop_from_best_and_round_trips():
    p = ProbeSets(size=2, every=1)
    p.take("t", "a", "one", "x"), p.take("t", "b", "two", "x")
    assert p.record(p.evaluate(FakeLearner("x"))) == {"t": 0.0}
    assert p.record(p.evaluate(FakeLearner("y"))) == {"t": 1.0}
    q = ProbeSets(size=2, every=1)
    q.load_state_dict(p.state_dict())
    assert q.items == p.items and q.best == {"t": 1.0}
