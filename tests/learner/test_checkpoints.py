import json
import logging
import os
from pathlib import Path

import pytest
import torch

from learner import CheckpointError, CheckpointManager, MemoryConfig

TEXTS = ["where is my card", "my card has not arrived", "how do I top up", "top up failed", "exchange rate?"]
LABELS = ["card_arrival", "card_arrival", "top_up", "top_up", "exchange_rate"]


def trained(tiny_learner, updates=2):
    learner = tiny_learner(memory=MemoryConfig(capacity=8, seed=1))
    for i in range(updates):
        learner.learn_many("feedback.intents", TEXTS, LABELS)
        if i == 0:
            learner.learn_many("news", ["stocks up", "stocks down"], ["positive", "negative"])
            learner.learn_many("feedback.intents", ["card declined"], ["card_declined"])  # second head chunk
    return learner


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_into_a_fresh_learner(tiny_learner, tmp_path):
    a = trained(tiny_learner)
    manager = CheckpointManager(tmp_path)
    path = manager.save(a, extra={"offsets": {"feedback-0": 42}})
    assert path.name == f"ckpt-{a.model_version:012d}"
    assert sorted(p.name for p in path.iterdir()) == ["memory.json", "meta.json", "model.safetensors"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["created_at"] and set(meta["checksums"]) == {
        "model.safetensors",
        "memory.json",
    }

    b = tiny_learner(memory=MemoryConfig(capacity=8, seed=1))
    assert manager.load_latest(b) == {"offsets": {"feedback-0": 42}}
    assert b.model_version == a.model_version
    assert b.tasks() == a.tasks() and all(b.labels(t) == a.labels(t) for t in a.tasks())
    assert b.replay.state_dict() == a.replay.state_dict()
    assert b.counters() == a.counters()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for task in a.tasks():
        pa, pb = a.predict_many(task, TEXTS), b.predict_many(task, TEXTS)
        assert [p.label for p in pa] == [p.label for p in pb]
        # Heads come back as one merged chunk: equal up to float summation order.
        assert [p.confidence for p in pa] == pytest.approx([p.confidence for p in pb], abs=1e-6)
    # The restored learner keeps learning from where the original was.
    assert b.learn_many("news", ["flat market"], ["neutral"]).model_version == a.model_version + 1


def test_keep_last_prunes_oldest(tiny_learner, tmp_path):
    learner = tiny_learner()
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None and manager.list() == []
    for _ in range(4):
        learner.learn_many("t", TEXTS, LABELS)
        manager.save(learner)
    assert [p.name for p in manager.list()] == ["ckpt-000000000004", "ckpt-000000000003"]
    assert manager.latest().name == "ckpt-000000000004"
    assert visible(tmp_path) == ["ckpt-000000000003", "ckpt-000000000004"]  # no temp dirs left


def test_crash_mid_save_leaves_no_checkpoint(tiny_learner, tmp_path, monkeypatch):
    learner = tiny_learner()
    learner.learn_many("t", TEXTS, LABELS)
    manager = CheckpointManager(tmp_path)
    manager.save(learner, extra={"v": 1})
    learner.learn_many("t", TEXTS, LABELS)

    real_replace = os.replace

    def crash(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".tmp-ckpt-"):
            raise OSError("simulated crash during rename")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        manager.save(learner, extra={"v": 2})
    monkeypatch.undo()
    assert visible(tmp_path) == ["ckpt-000000000001"]
    fresh = tiny_learner()
    assert manager.load_latest(fresh) == {"v": 1} and fresh.model_version == 1


def test_resave_same_version_replaces_safely(tiny_learner, tmp_path, monkeypatch):
    learner = tiny_learner()
    learner.learn_many("t", TEXTS, LABELS)
    manager = CheckpointManager(tmp_path)
    manager.save(learner, extra={"try": 1})
    manager.save(learner, extra={"try": 2})
    assert visible(tmp_path) == ["ckpt-000000000001"]
    assert manager.load_latest(tiny_learner()) == {"try": 2}

    # A crash while swapping keeps the previous copy under its name.
    real_replace = os.replace

    def crash(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".tmp-ckpt-"):
            raise OSError("simulated crash during swap")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        manager.save(learner, extra={"try": 3})
    monkeypatch.undo()
    assert visible(tmp_path) == ["ckpt-000000000001"]
    assert manager.load_latest(tiny_learner()) == {"try": 2}


def test_checkpoint_left_aside_by_a_killed_swap_is_recovered(tiny_learner, tmp_path):
    learner = tiny_learner()
    learner.learn_many("t", TEXTS, LABELS)
    manager = CheckpointManager(tmp_path)
    path = manager.save(learner, extra={"ok": True})
    # What a process killed between the two renames of a same-version save leaves behind.
    os.replace(path, tmp_path / f".swap-{path.name}.deadbeef")
    (tmp_path / ".tmp-ckpt-half").mkdir()
    assert manager.list() == []
    assert manager.load_latest(tiny_learner()) == {"ok": True}
    assert visible(tmp_path) == [path.name]


@pytest.mark.parametrize("damage", ["truncate_model", "flip_memory", "garbage_meta", "missing_model"])
def test_corrupt_newest_falls_back_to_previous(tiny_learner, tmp_path, caplog, damage):
    learner = tiny_learner()
    manager = CheckpointManager(tmp_path)
    learner.learn_many("t", TEXTS, LABELS)
    manager.save(learner, extra={"v": 1})
    learner.learn_many("t", TEXTS[:2], LABELS[:2])
    newest = manager.save(learner, extra={"v": 2})

    if damage == "truncate_model":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip_memory":
        data = bytearray((newest / "memory.json").read_bytes())
        data[len(data) // 2] ^= 0x01
        (newest / "memory.json").write_bytes(bytes(data))
    elif damage == "garbage_meta":
        (newest / "meta.json").write_text("{not json")
    else:
        (newest / "model.safetensors").unlink()

    fresh = tiny_learner()
    with caplog.at_level(logging.WARNING, logger="learner.checkpoints"):
        assert manager.load_latest(fresh) == {"v": 1}
    assert fresh.model_version == 1
    assert any(newest.name in r.getMessage() for r in caplog.records)


def test_all_corrupt_raises_and_empty_dir_gives_none(tiny_learner, tmp_path):
    manager = CheckpointManager(tmp_path / "missing")
    assert manager.load_latest(tiny_learner()) is None
    learner = tiny_learner()
    learner.learn_many("t", TEXTS, LABELS)
    manager = CheckpointManager(tmp_path)
    path = manager.save(learner)
    (path / "memory.json").write_text("{}")
    fresh = tiny_learner()
    with pytest.raises(CheckpointError):
        manager.load_latest(fresh)
    assert fresh.model_version == 0 and fresh.tasks() == []


def test_incompatible_checkpoint_leaves_learner_untouched(tiny_learner, tmp_path):
    learner = tiny_learner()
    learner.learn_many("t", TEXTS, LABELS)
    state, meta, memory_state = learner.state_dict(), learner.metadata(), learner.replay.state_dict()
    other = tiny_learner()
    other.learn_many("x", ["a"], ["b"])
    before = other.state_dict()
    bad_state = {k: v for k, v in state.items() if not k.startswith("head.")}
    with pytest.raises(ValueError):
        other.load(bad_state, meta, memory_state)
    assert other.tasks() == ["x"] and other.model_version == 1
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_rejects_non_json_extra_and_bad_keep_last(tiny_learner, tmp_path):
    learner = tiny_learner()
    with pytest.raises(ValueError, match="^extra"):
        CheckpointManager(tmp_path).save(learner, extra={"when": object()})
    assert visible(tmp_path) == []
    with pytest.raises(ValueError, match="^keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
