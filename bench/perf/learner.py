"""Learner benchmark: ``learn_many`` samples/s per mode against a plain PyTorch loop.

For each mode (head / lora / full) one :class:`~learner.Learner` with the worker's defaults
(strategy ``er``, ER-ACE, replay ratio 1) and a plain loop — a copy of the same model, one
``nn.Linear`` head, AdamW, cross-entropy, clip — train on the *same* batches: each micro-batch
of new BANKING77 samples plus exactly the replayed samples ``learn_many`` drew. The sides
alternate batch by batch (the order flips every batch), so a noisy neighbour slows both.

Head mode runs as the stream does: every event is predicted before it is learned, so the
batch's features are already in the learner's cache. Beside it run

* a learner whose cache forgets the replay memory (it **recomputes the encoder for the
  replayed samples**: the ≥5x target), and
* a plain loop over precomputed features (the floor of a head update: it shows the fixed
  Python cost of ``learn_many``).

    python -m bench.perf.learner --modes head,lora,full --batches 10
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.perf.common import PeakRSS, banking77, machine

TASK = "feedback"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainLoop:
    """nanoGPT-style loop on a copy of ``learner.model`` and a fixed-size head."""

    def __init__(self, learner, labels: list[str], *, cached: bool = False):
        from learner.model import param_groups

        cfg = learner.config
        self.device = learner.device
        self.frozen = cfg.frozen
        self.model = copy.deepcopy(learner.model)
        self.index = {y: i for i, y in enumerate(labels)}
        self.head = nn.Linear(self.model.hidden_size, len(labels)).to(self.device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        groups = [] if self.frozen else param_groups(self.model.encoder, cfg.lr, cfg.weight_decay)
        groups += [{"params": [self.head.weight], "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
                   {"params": [self.head.bias], "lr": cfg.head_lr, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.params = [p for g in groups for p in g["params"]]
        self.clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        self.cached = cached
        self.features: dict[str, torch.Tensor] = {}

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    def precompute(self, texts: list[str]) -> None:
        self.model.eval()
        with torch.inference_mode():
            for i in range(0, len(texts), 128):
                chunk = texts[i:i + 128]
                self.features.update(zip(chunk, self.model.encode(chunk).float().cpu()))

    def step(self, texts: list[str], labels: list[str]) -> float:
        y = torch.tensor([self.index[v] for v in labels], device=self.device)   # (B,)
        with self._autocast():
            if self.cached:
                feats = torch.stack([self.features[t] for t in texts]).to(self.device)  # (B, H)
            elif self.frozen:
                self.model.eval()
                with torch.no_grad():
                    feats = self.model.encode(texts)                           # (B, H)
            else:
                self.model.train()
                feats = self.model.features(self.model.tokenize(texts))       # (B, H)
            logits = self.head(feats)                                          # (B, N)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def _no_replay_cache(learner) -> None:
    """Make ``learner`` recompute the encoder for replayed samples (its cache keeps no memory)."""
    from learner.features import FeatureCache

    class Forgetful(FeatureCache):
        def __len__(self) -> int:   # always "over the slack": learn_many prunes every update
            return 1 << 30

        def prune(self, keep) -> None:
            self._cached = {}

    learner.features = Forgetful(learner._encode)


def _record_replay(learner) -> list:
    """Wrap ``learner.replay.sample`` so that the benchmark sees what each update replayed."""
    drawn: list = []
    sample = learner.replay.sample

    def recording(n):
        items = sample(n)
        drawn.append(list(items))
        return items

    learner.replay.sample = recording
    return drawn


def bench_mode(mode: str, texts: list[str], labels: list[str], *, batches: int, batch_size: int,
               warmup: int, model: str | None, device: str, max_length: int, strategy: str,
               lora_layers: int) -> dict:
    from learner import Learner, LearnerConfig, MemoryConfig

    cfg = LearnerConfig(model=model, device=device, mode=mode, strategy=strategy,
                        max_length=max_length, lora_layers=lora_layers)
    memory = MemoryConfig()
    total = warmup + batches
    stream = [(texts[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size])
              for i in range(total)]
    label_set = list(dict.fromkeys(labels[:total * batch_size]))
    with PeakRSS() as peak:
        if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
            torch.cuda.reset_peak_memory_stats()
        learner = Learner(cfg, memory)
        plain = PlainLoop(learner, label_set)
        sides = {"learn_many": learner, "plain_loop": plain}
        if mode == "head":
            slow = Learner(cfg, memory)
            _no_replay_cache(slow)
            sides["learn_many_recompute_replay"] = slow
            floor = PlainLoop(learner, label_set, cached=True)
            floor.precompute(texts[:total * batch_size])
            sides["plain_loop_cached_features"] = floor
        drawn = {name: _record_replay(side) for name, side in sides.items() if name.startswith("learn")}
        seconds = {name: 0.0 for name in sides}
        samples = {name: 0 for name in sides}
        new = 0
        names = list(sides)
        for b, (bx, by) in enumerate(stream):
            order = names if b % 2 == 0 else names[::-1]
            batch_replay = None
            for name in order:
                side = sides[name]
                if name.startswith("learn"):
                    if mode == "head":   # the stream predicts every event before learning it
                        side.predict_many(TASK, bx)
                    _sync(learner.device)
                    t = time.perf_counter()
                    stats = side.learn_many(TASK, bx, by)
                    _sync(learner.device)
                    dt = time.perf_counter() - t
                    n = stats.n_new + stats.n_replay
                    if name == "learn_many":
                        batch_replay = drawn[name][-1]
                else:
                    continue
                if b >= warmup:
                    seconds[name] += dt
                    samples[name] += n
            # The plain loops train on exactly what learn_many trained on.
            rx = bx + [item.text for item in batch_replay or []]
            ry = by + [item.label for item in batch_replay or []]
            for name in order:
                if name.startswith("plain"):
                    _sync(learner.device)
                    t = time.perf_counter()
                    sides[name].step(rx, ry)
                    _sync(learner.device)
                    if b >= warmup:
                        seconds[name] += time.perf_counter() - t
                        samples[name] += len(rx)
            if b >= warmup:
                new += len(bx)
        cuda_peak = torch.cuda.max_memory_allocated() if learner.device.type == "cuda" else None
    out = {
        "batches": batches, "batch_size": batch_size, "strategy": strategy,
        "samples_trained": samples["learn_many"], "new_samples": new,
        "samples_per_second": samples["learn_many"] / seconds["learn_many"],
        "new_samples_per_second": new / seconds["learn_many"],
        "plain_loop_samples_per_second": samples["plain_loop"] / seconds["plain_loop"],
        "ratio_vs_plain_loop": seconds["plain_loop"] / seconds["learn_many"],
        "seconds": seconds,
        "peak_rss_bytes": peak.bytes,
        "cuda_peak_allocated_bytes": cuda_peak,
    }
    if mode == "head":
        out["recompute_replay_samples_per_second"] = (samples["learn_many_recompute_replay"]
                                                      / seconds["learn_many_recompute_replay"])
        out["ratio_cached_vs_recompute_replay"] = (seconds["learn_many_recompute_replay"]
                                                   / seconds["learn_many"])
        out["plain_loop_cached_samples_per_second"] = (samples["plain_loop_cached_features"]
                                                       / seconds["plain_loop_cached_features"])
        out["ratio_vs_plain_loop_cached_features"] = (seconds["plain_loop_cached_features"]
                                                      / seconds["learn_many"])
        out["overhead_ms_per_update_vs_cached_loop"] = 1000 * (
            seconds["learn_many"] - seconds["plain_loop_cached_features"]) / batches
    return out


def run(args: argparse.Namespace) -> dict:
    modes = [m for m in args.modes.split(",") if m]
    total = (args.warmup + args.batches) * args.batch_size
    texts, labels = banking77(limit=total, seed=args.seed)
    torch.manual_seed(args.seed)
    result = {}
    for mode in modes:
        started = time.perf_counter()
        result[mode] = bench_mode(mode, texts, labels, batches=args.batches, batch_size=args.batch_size,
                                  warmup=args.warmup, model=args.model, device=args.device,
                                  max_length=args.max_length, strategy=args.strategy,
                                  lora_layers=args.lora_layers)
        result[mode]["wall_seconds"] = time.perf_counter() - started
    result["config"] = {"modes": modes, "batches": args.batches, "batch_size": args.batch_size,
                        "warmup": args.warmup, "max_length": args.max_length,
                        "strategy": args.strategy, "lora_layers": args.lora_layers,
                        "replay_ratio": 1.0}
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", default="head,lora,full")
    p.add_argument("--batches", type=int, default=10, help="timed micro-batches per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed micro-batches first")
    p.add_argument("--batch-size", type=int, default=16, help="new samples per update (+ as many replayed)")
    p.add_argument("--strategy", default="er")
    p.add_argument("--lora-layers", type=int, default=0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--model", default=None, help="encoder directory (default: bundled MiniLM)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.learner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    print(json.dumps({"learner": run(args), "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
