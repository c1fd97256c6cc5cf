"""GPU benchmark behind ``bench/gpu.sh``: learner samples/s per mode (head / lora / full) with
bf16 autocast (the learner's own, on CUDA) and optionally ``torch.compile`` of the encoder, at
sequence lengths 64 and 128, plus predict throughput; prints a short table.

Texts are BANKING77 sentences joined until they fill the sequence length, so every batch is
(B, L) with no padding luck. On a CPU it runs with reduced sizes (CI keeps it working).

    bash bench/gpu.sh                          # CUDA: 20 updates of 64 + 64 replayed per cell
    bash bench/gpu.sh --compile off --seq-lens 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.perf.common import banking77, machine

TASK = "feedback"


def _long_texts(n: int, tokens: int, tokenizer, seed: int) -> tuple[list[str], list[str]]:
    texts, labels = banking77(seed=seed)
    out, i = [], 0
    for k in range(n):
        parts = []
        while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
            parts.append(texts[i % len(texts)])
            i += 1
        out.append(" ".join(parts))
    return out, [labels[k % len(labels)] for k in range(n)]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cell(mode: str, seq: int, args, cuda: bool) -> dict:
    from learner import Learner, LearnerConfig

    learner = Learner(LearnerConfig(model=args.model, device=args.device, mode=mode, max_length=seq))
    compiled = False
    if args.compile == "on" or (args.compile == "auto" and cuda):
        try:
            learner.model.encoder = torch.compile(learner.model.encoder)
            compiled = True
        except Exception as exc:  # compile is an optimisation; report and go on without it
            print(f"torch.compile failed for {mode}: {exc!r}")
    bs = args.batch_size
    n = (args.warmup + args.batches) * bs
    texts, labels = _long_texts(n + args.predict_texts, seq, learner.model.tokenizer, args.seed)
    seconds = samples = 0.0
    for b in range(args.warmup + args.batches):
        bx, by = texts[b * bs:(b + 1) * bs], labels[b * bs:(b + 1) * bs]
        if mode == "head":
            learner.predict_many(TASK, bx)   # the stream predicts first: features cached
        _sync(learner.device)
        t = time.perf_counter()
        stats = learner.learn_many(TASK, bx, by)
        _sync(learner.device)
        if b >= args.warmup:
            seconds += time.perf_counter() - t
            samples += stats.n_new + stats.n_replay
    unseen = texts[n:]
    learner.features.clear()
    learner.predict_many(TASK, unseen[:bs])    # warm the predict path (and its compile)
    learner.features.clear()
    _sync(learner.device)
    t = time.perf_counter()
    learner.predict_many(TASK, unseen)
    _sync(learner.device)
    predict_s = time.perf_counter() - t
    return {"mode": mode, "seq_len": seq, "compiled": compiled, "batch_size": bs,
            "learn_samples_per_second": samples / seconds if seconds else float("nan"),
            "predict_texts_per_second": len(unseen) / predict_s,
            "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="head,lora,full")
    p.add_argument("--seq-lens", default="64,128")
    p.add_argument("--batch-size", type=int, default=64 if cuda else 4, help="new samples per update")
    p.add_argument("--batches", type=int, default=20 if cuda else 1)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--predict-texts", type=int, default=2048 if cuda else 8)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the encoder (auto: on CUDA only)")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    rows = [cell(mode, int(seq), args, cuda) for seq in args.seq_lens.split(",")
            for mode in args.modes.split(",")]
    info = machine()
    print(f"device {info['device']}, torch {info['torch']}, bf16 autocast {'on' if cuda else 'off (CPU)'}")
    print(f"{'mode':<6}{'seq':>5}{'compiled':>10}{'learn samples/s':>17}{'predict texts/s':>17}")
    for r in rows:
        print(f"{r['mode']:<6}{r['seq_len']:>5}{str(r['compiled']):>10}"
              f"{r['learn_samples_per_second']:>17,.1f}{r['predict_texts_per_second']:>17,.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": rows, "machine": info}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
