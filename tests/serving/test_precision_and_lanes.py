"""SERVE_PRECISION (a bf16 serving copy on CPUs with native bf16) and inference lanes
(sub-batches side by side, one thread each): both change speed, never the answer's meaning."""

from __future__ import annotations

import threading

import pytest
import torch

from learner.lanes import Lanes, lanes_for
from serving.config import ServeConfig
from serving.snapshot import ModelSnapshot, base_classifier, native_bf16, serving_dtype

TEXTS = [f"my card number {i} was {'stolen ' * (i % 7)}yesterday, what now?" for i in range(40)]


def test_precision_setting_is_validated():
    assert ServeConfig().precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        ServeConfig(precision="int8")


def test_serving_dtype_follows_the_setting_and_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert serving_dtype("fp32", cpu) == torch.float32
    assert serving_dtype("bf16", cpu) == torch.bfloat16
    assert serving_dtype("auto", cpu) == (torch.bfloat16 if native_bf16() else torch.float32)
    for precision in ("auto", "fp32", "bf16"):   # accelerators keep fp32 weights + autocast
        assert serving_dtype(precision, cuda) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        serving_dtype("fp16", cpu)


def test_a_bf16_serving_copy_agrees_with_fp32(tiny_model_dir):
    cpu = torch.device("cpu")
    fp32 = base_classifier(tiny_model_dir, max_length=32, device=cpu, precision="fp32")
    bf16 = base_classifier(tiny_model_dir, max_length=32, device=cpu, precision="bf16")
    assert {p.dtype for p in fp32.encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.encoder.parameters()} == {torch.bfloat16}
    a = ModelSnapshot.empty(fp32, mode="head").score("t", TEXTS).features
    b = ModelSnapshot.empty(bf16, mode="head").score("t", TEXTS).features
    assert a.dtype == b.dtype == torch.float32    # pooled in fp32, whatever the encoder
    assert a.shape == b.shape == (len(TEXTS), fp32.hidden_size)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_lanes_return_results_in_order_each_under_inference_mode():
    lanes = Lanes(2)
    seen = []

    def work(i):
        seen.append((threading.current_thread().name, torch.is_inference_mode_enabled(),
                     torch.get_num_threads()))
        return i * i

    try:
        assert lanes.map(work, range(9)) == [i * i for i in range(9)]
        assert all(mode and threads == 1 for _, mode, threads in seen)
        assert {name for name, _, _ in seen} <= {"streamlearner-lane_0", "streamlearner-lane_1"}
        assert lanes.map(work, [3]) == [9] and seen[-1][2] == 2   # one item: both threads
        assert lanes.map(work, []) == []

        def fail(i):
            raise ValueError(f"bad {i}")

        with pytest.raises(ValueError, match="bad"):
            lanes.map(fail, range(3))
    finally:
        lanes.close()
    with pytest.raises(ValueError):
        Lanes(0)


def test_lanes_for_one_thread_is_none_and_shared_otherwise():
    assert lanes_for(1) is None
    assert lanes_for(2) is lanes_for(2)


def test_encoding_across_lanes_equals_encoding_on_one_thread(tiny_model_dir):
    model = base_classifier(tiny_model_dir, max_length=32, device=torch.device("cpu"))
    with torch.inference_mode():
        alone = model.encode(TEXTS)
        across = model.encode(TEXTS, lanes=lanes_for(2))
    assert torch.allclose(alone, across, atol=1e-5)


def test_the_traced_encoder_gives_the_eager_features(tiny_model_dir):
    from serving.snapshot import TracedEncoder, traced

    cpu = torch.device("cpu")
    fast = base_classifier(tiny_model_dir, max_length=32, device=cpu, trace=True)
    slow = base_classifier(tiny_model_dir, max_length=32, device=cpu, trace=False)
    assert isinstance(traced(fast), TracedEncoder) and traced(slow) is None
    snap = ModelSnapshot.empty(fast, mode="head")
    assert snap.fast is traced(fast)
    assert ModelSnapshot.empty(fast, mode="lora").fast is None   # own weights: eager
    for texts in (TEXTS[:1], TEXTS[:5], TEXTS):                 # one padded pass, lanes
        a = snap.score("t", texts).features
        b = ModelSnapshot.empty(slow, mode="head").score("t", texts).features
        assert torch.allclose(a, b, atol=1e-5)


def test_a_serving_thread_encodes_a_batch_in_one_call_of_the_trace(tiny_model_dir, monkeypatch):
    """On one thread (a serving lane) every sub-batch of a batch goes through one scripted
    call, rows back in the texts' order; the features are the eager encoder's."""
    from serving.snapshot import TracedEncoder, traced

    cpu = torch.device("cpu")
    fast = base_classifier(tiny_model_dir, max_length=32, device=cpu, trace=True)
    calls = {"in_order": 0, "one": 0}
    in_order, one = TracedEncoder.pooled_features_in_order, TracedEncoder.pooled_features

    def count(name, fn):
        def wrapper(self, *args):
            calls[name] += 1
            return fn(self, *args)
        return wrapper

    monkeypatch.setattr(TracedEncoder, "pooled_features_in_order", count("in_order", in_order))
    monkeypatch.setattr(TracedEncoder, "pooled_features", count("one", one))
    texts = TEXTS[::-1] + ["a short one", "x"]   # longer texts first: the order is undone
    with torch.inference_mode():
        got = fast.encode(texts, encoder=traced(fast))
        want = fast.encode(texts)                                    # eager, sub-batch by sub-batch
        each = torch.cat([fast.features(fast.tokenize([t])) for t in texts])   # unpadded
    assert calls == {"in_order": 1, "one": 0}
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got, each, atol=1e-4)


def test_a_trace_that_disagrees_with_the_encoder_is_not_used(tiny_model_dir, monkeypatch, caplog):
    from serving import snapshot

    real = torch.jit.trace

    def wrong(module, example, **kw):
        script = real(module, example, **kw)
        return lambda ids, mask: script(ids, mask) + 1.0   # off by one everywhere

    monkeypatch.setattr(torch.jit, "trace", wrong)
    with caplog.at_level("WARNING", logger="serving.snapshot"):
        base = base_classifier(tiny_model_dir, max_length=32, device=torch.device("cpu"),
                               trace=True)
    assert snapshot.traced(base) is None
    assert "eagerly" in caplog.text and "disagrees" in caplog.text
    assert ModelSnapshot.empty(base, mode="head").score("t", TEXTS[:3]).features.shape[0] == 3


def test_trace_setting_defaults_on():
    assert ServeConfig().trace is True


# -- serving lanes: whole batches side by side on serving threads of their own ---------------

def test_lanes_setting_is_validated_and_resolved(monkeypatch):
    from streamlearner.roles import serving_lanes
    from streamlearner.settings import Settings, SettingsError

    assert ServeConfig().lanes == 0
    with pytest.raises(ValueError, match="lanes"):
        ServeConfig(lanes=-1)
    with pytest.raises(SettingsError, match="SERVE_LANES"):
        Settings.from_env({"SERVE_LANES": "-2"})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert serving_lanes(Settings.from_env({"LEARNER_DEVICE": "cpu"})) == (4, 1)
    assert serving_lanes(Settings.from_env({"LEARNER_DEVICE": "cpu", "SERVE_LANES": "2"})) == (2, 2)
    assert serving_lanes(Settings.from_env({"SERVE_LANES": "1"})) == (1, None)
    assert serving_lanes(Settings.from_env({"LEARNER_DEVICE": "cuda"})) == (1, None)


def test_each_thread_tokenizes_with_its_own_copy(tiny_model_dir):
    import copy
    import pickle

    from serving.snapshot import PerThreadTokenizer

    base = base_classifier(tiny_model_dir, max_length=32, device=torch.device("cpu"))
    tok = base.tokenizer
    assert isinstance(tok, PerThreadTokenizer)
    expected = tok(TEXTS, truncation=True, max_length=16)["input_ids"]
    seen, results, errors = set(), [], []

    def work(max_length):
        try:
            for _ in range(20):
                out = tok(TEXTS, truncation=True, max_length=max_length)["input_ids"]
            seen.add(id(tok._mine()))
            results.append((max_length, out))
        except Exception as exc:   # pragma: no cover - what the copies prevent
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in (16, 24, 16, 24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 4                  # one copy per thread
    assert all(out == expected for n, out in results if n == 16)
    assert tok.pad_token_id == tok._original.pad_token_id   # attributes pass through
    for clone in (copy.deepcopy(tok), pickle.loads(pickle.dumps(tok))):
        assert isinstance(clone, PerThreadTokenizer)
        assert clone(TEXTS[:2])["input_ids"] == tok(TEXTS[:2])["input_ids"]


def test_an_explanation_excludes_eager_scoring_but_not_other_scoring():
    from serving.snapshot import SharedLock

    lock = SharedLock()
    events = []
    inside = threading.Event()
    release = threading.Event()

    def explain():
        with lock.exclusive():
            events.append("explain in")
            inside.set()
            release.wait(5)
            events.append("explain out")

    def score(name):
        with lock.shared():
            events.append(name)

    with lock.shared(), lock.shared():    # shared holders together
        pass
    t = threading.Thread(target=explain)
    t.start()
    assert inside.wait(5)
    s = threading.Thread(target=score, args=("score",))
    s.start()
    s.join(0.2)
    assert s.is_alive()                   # waits for the explanation
    release.set()
    t.join(5)
    s.join(5)
    assert events == ["explain in", "explain out", "score"]


def test_serving_threads_run_batches_side_by_side_each_with_its_own_torch_threads():
    import asyncio

    from streams.handoff import ModelThread

    with pytest.raises(ValueError, match="workers"):
        ModelThread(workers=0)
    barrier = threading.Barrier(2, timeout=10)

    def job():
        barrier.wait()            # both jobs must run at once, or this times out
        return torch.get_num_threads()

    async def main():
        with ModelThread(name="test-lanes", workers=2, torch_threads=1) as pool:
            assert pool.queue_size >= 2
            return await asyncio.gather(pool.run(job), pool.run(job))

    before = torch.get_num_threads()
    try:
        assert asyncio.run(main()) == [1, 1]
    finally:   # a thread's count is also the default of threads started later: restore it
        torch.set_num_threads(before)
