"""A trainer of 2 gloo ranks computes what one process computes (learner/distributed.py).

Two ranks forked on this machine and one plain :class:`Learner`, same seed, same 20
micro-batches (two tasks, labels appearing along the way, batches of 1 sample and batches
that do not split evenly over the ranks): parameters and replay memory agree within 1e-5, in
head, lora and full modes, and both ranks hold the same learner. The tiny BERT has no dropout
(with dropout, each rank draws its own masks: the same in distribution, not in value).
Then: a lost rank stops the trainer instead of hanging it, and the launcher's exit codes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from learner import Learner, LearnerConfig, MemoryConfig
from learner.distributed import Batch, DistributedLearner, Ranks, init, shares

MODES = ("head", "lora", "full")
TOL = 1e-5
# Sizes of the new samples per update. With replay ratio 0.5 the whole batch is n + round(n/2):
# 1 -> 1 (one rank gets nothing), 3 -> 5 and 5 -> 7 (uneven), 4 -> 6.
SIZES = [1, 3, 4, 1, 5, 2, 3, 1, 4, 5, 3, 1, 2, 5, 4, 3, 1, 5, 2, 3]


def stream() -> list[tuple[str, list[str], list[str]]]:
    batches, k = [], 0
    for i, n in enumerate(SIZES):
        task = "intents" if i % 3 else "topics"
        labels = [f"{task[0]}{(k + j) % (2 + i // 4)}" for j in range(n)]   # more labels later
        texts = [f"sample {k + j} of {task}: " + " ".join(["word"] * ((k + j) % 7)) for j in range(n)]
        batches.append((task, texts, labels))
        k += n
    return batches


def configs(model_dir: str, mode: str, strategy: str = "er") -> tuple[LearnerConfig, MemoryConfig]:
    return (LearnerConfig(model=model_dir, device="cpu", mode=mode, seed=3, strategy=strategy,
                          lora_rank=4, dist_timeout_s=60),
            MemoryConfig(capacity=12, replay_ratio=0.5, seed=5))


def snapshot(learner: Learner) -> dict:
    return {"tensors": learner.state_dict(), "memory": learner.replay.state_dict(),
            "version": learner.model_version, "labels": {t: learner.labels(t) for t in learner.tasks()},
            "counters": learner.counters()}


def _rank(rank: int, world: int, port: int, model_dir: str, plan: list, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = Ranks(rank, world, rank)
    results = {}
    group = None
    for mode, strategy in plan:
        config, memory = configs(model_dir, mode, strategy)
        if group is None:
            config, group = init(config, ranks)
        learner = DistributedLearner(config, memory, group=group)
        if rank == 0:
            for task, texts, labels in stream():
                learner.learn_many(task, texts, labels)
            learner.stop()
        else:
            learner.follow()
        results[(mode, strategy)] = snapshot(learner)
    torch.save(results, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def no_dropout_dir(tmp_path_factory) -> str:
    from transformers import BertConfig, BertModel

    from learner.model import default_model_path

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(default_model_path()) / name, path / name)
    return str(path)


def _spawn(tmp_path, model_dir: str, plan: list) -> list[dict]:
    from learner.distributed import _free_port

    # Forked from this process, which imported torch and transformers already (a spawned rank
    # spends ~9 s importing them on 2 busy cores); the ranks run one torch thread each.
    mp.start_processes(_rank, args=(2, _free_port(), model_dir, plan, str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _max_diff(a: dict, b: dict, *, strategy: bool = False) -> float:
    """Largest absolute difference of the model tensors; with ``strategy``, of the strategy
    tensors relative to each one's scale (EWC's Fisher is normalised to mean 1: its large
    entries carry float32 rounding of their own size)."""
    assert a.keys() == b.keys()
    keys = [k for k in a if a[k].numel() and k.startswith("strategy.") == strategy]
    return max(((a[k].float() - b[k].float()).abs().max().item()
                / (max(1.0, a[k].float().abs().max().item()) if strategy else 1.0) for k in keys),
               default=0.0)


def _same_memory(a: dict, b: dict) -> float:
    """Equal memories (texts, labels, order, seen counts, RNG); returns the largest difference
    of their stored logits (DER++)."""
    assert a["rng"] == b["rng"] and len(a["classes"]) == len(b["classes"])
    worst = 0.0
    for ca, cb in zip(a["classes"], b["classes"]):
        assert (ca["task"], ca["label"], ca["seen"]) == (cb["task"], cb["label"], cb["seen"])
        assert [t for t, _ in ca["items"]] == [t for t, _ in cb["items"]]
        for (_, la), (_, lb) in zip(ca["items"], cb["items"]):
            assert (la is None) == (lb is None)
            if la is not None:
                worst = max(worst, max(abs(x - y) for x, y in zip(la, lb)))
    return worst


PLAN = [("head", "er"), ("lora", "er"), ("full", "derpp+ewc")]   # full: replay + EWC + DER++ logits


def test_two_ranks_equal_one(tmp_path, no_dropout_dir):
    ranks = _spawn(tmp_path, no_dropout_dir, PLAN)
    report = []
    for mode, strategy in PLAN:
        single = Learner(*configs(no_dropout_dir, mode, strategy))
        for task, texts, labels in stream():
            single.learn_many(task, texts, labels)
        one = snapshot(single)
        r0, r1 = ranks[0][(mode, strategy)], ranks[1][(mode, strategy)]
        assert r0["version"] == r1["version"] == one["version"] == len(SIZES)
        assert r0["labels"] == r1["labels"] == one["labels"]
        assert r0["counters"] == r1["counters"] == one["counters"]
        for strategy_state in (False, True):   # the ranks are one learner, bit for bit
            assert _max_diff(r0["tensors"], r1["tensors"], strategy=strategy_state) == 0.0
        assert _same_memory(r0["memory"], r1["memory"]) == 0.0
        diff = _max_diff(r0["tensors"], one["tensors"])
        state = _max_diff(r0["tensors"], one["tensors"], strategy=True)
        logits = _same_memory(r0["memory"], one["memory"])
        report.append(f"{mode}/{strategy}: parameters max |2 ranks - 1| = {diff:.2e}, strategy "
                      f"state {state:.2e} (relative), memory logits {logits:.2e}")
        assert diff <= TOL and state <= TOL and logits <= TOL, report[-1]
    print("\n".join(report))


def test_shares_cover_the_batch():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            parts = shares(n, world)
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_shards_sum_to_the_whole_batch_loss(tiny_learner):
    """The per-rank loss terms (divisor B / W) average to the one-process loss."""
    from learner.losses import cross_entropy
    from learner.memory import MemoryItem
    from learner.strategies import Outputs

    learner = tiny_learner(mode="head")
    learner.learn_many("t", ["a", "b", "c"], ["x", "y", "x"])
    replayed = [MemoryItem("t", "a", "x"), MemoryItem("t", "b", "y")]
    batch = Batch.build("t", ["d", "e", "f"], ["y", "x", "y"], replayed, False,
                        learner._label_index, learner.device)
    feats = learner.features.get(batch.texts)

    def loss(b):
        logits = {t: learner.model.head(t)(feats[b.extra.get("lo", 0):][: len(b.texts)][r])
                  for t, r in b.rows.items()}
        return cross_entropy(b, Outputs(feats, logits), ace=True)

    whole = loss(batch)
    for world in (2, 3):
        parts = []
        for lo, hi in shares(len(batch.texts), world):
            shard = batch.shard(lo, hi, divisor=len(batch.texts) / world)
            shard.extra["lo"] = lo
            parts.append(loss(shard))
        assert torch.allclose(torch.stack(parts).mean(), whole, atol=1e-6)


def _lost(rank: int, world: int, port: int, model_dir: str, scenario: str, out: str) -> None:
    """Rank 0 and rank 1 of a pair where one goes away (``scenario``) while the other waits."""
    import json
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config, memory = configs(model_dir, "head")
    config = config.__class__(**{**config.__dict__, "dist_timeout_s": 2.0})
    config, group = init(config, Ranks(rank, world, rank))
    learner = DistributedLearner(config, memory, group=group)
    started = time.monotonic()
    result = {}
    if scenario == "follower dies":
        if rank == 1:
            os._exit(1)   # as SIGKILL would: no goodbye
        while learner.failure is None and time.monotonic() - started < 30:
            time.sleep(0.05)
        result["heartbeat_failed_after_s"] = time.monotonic() - started
        try:
            learner.learn_many("t", ["a", "b"], ["x", "y"])
        except RuntimeError as exc:
            result["learn_raised"] = type(exc).__name__
    else:   # rank 0 stays alive but silent: no command, no heartbeat
        if rank == 0:
            learner._stop.set()
            while not os.path.exists(f"{out}/rank1.json") and time.monotonic() - started < 20:
                time.sleep(0.05)
            return
        try:
            learner.follow()
        except RuntimeError:
            result["follow_raised_after_s"] = time.monotonic() - started
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)


@pytest.mark.parametrize("scenario", ["follower dies", "rank 0 goes silent"])
def test_a_lost_rank_stops_the_trainer_instead_of_hanging_it(tmp_path, no_dropout_dir, scenario):
    import json

    from learner.distributed import _free_port

    ctx = mp.start_processes(_lost, args=(2, _free_port(), no_dropout_dir, scenario, str(tmp_path)),
                             nprocs=2, join=False, start_method="fork")
    for p in ctx.processes:
        p.join(timeout=60)
        assert not p.is_alive(), "a rank hung"
    survivor = 0 if scenario == "follower dies" else 1
    result = json.loads((tmp_path / f"rank{survivor}.json").read_text())
    print(scenario, result)
    if survivor == 0:   # the heartbeat noticed (roles.py turns that into a fail-stop) ...
        assert result["heartbeat_failed_after_s"] < 30
        assert result["learn_raised"] == "RuntimeError"   # ... and an update fails, not hangs
    else:               # the follower's wait for a command timed out (dist_timeout_s = 2)
        assert 1.5 < result["follow_raised_after_s"] < 30


@pytest.mark.parametrize("name", ["learner.distributed", "learner.strategies.base"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


RANK_SCRIPT = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
assert os.environ["WORLD_SIZE"] == "2" and os.environ["MASTER_PORT"]
def stopped(*_):
    open(sys.argv[3], "w").write("SIGTERM")   # told to stop, not finished on its own
    sys.exit(0)
if rank == 0:   # a leader that drains on SIGTERM, or ends by itself
    signal.signal(signal.SIGTERM, stopped)
    time.sleep(float(sys.argv[1]))
    sys.exit(0)
time.sleep(0.2)
sys.exit(int(sys.argv[2]))   # a follower: 0 once told to stop, else it failed
"""


@pytest.mark.parametrize("leader_s, follower_code, expected, signalled", [
    (0.5, 0, 0, False),   # a clean stop: every rank ends with 0 by itself
    (60, 7, 3, True),     # a follower fails: rank 0 is stopped (SIGTERM), the trainer fails
])
def test_launch_stops_the_trainer_when_a_rank_fails(leader_s, follower_code, expected,
                                                    signalled, tmp_path):
    import sys

    from learner.distributed import launch

    marker = tmp_path / "leader-stopped"
    code = launch([sys.executable, "-c", RANK_SCRIPT, str(leader_s), str(follower_code),
                   str(marker)], 2, grace_s=10, failed=3)
    assert code == expected and marker.exists() == signalled
