"""Each optimisation lever of issue #6 measured on its own, A against B in one process
(alternating, so a noisy neighbour slows both). Results go to bench/NOTES.md.

* ``shared_encode``: head mode, one stream micro-batch of 32 on the model thread — predict,
  drift embedding, update — with the recent-features cache (one encoder pass) against the
  old path (predict encodes without keeping, drift encodes again, the update encodes again);
* ``sorted_sub_batches``: ``TextClassifier.encode`` of 32 texts: sorted sub-batches of 8
  against one batch padded to the longest text;
* ``cleaning_hints``: the per-event ingest stage with the URL/digit hints against
  unconditional regex substitutions;
* ``tokenize_share``: what tokenising costs in a lora update (the "store token ids" lever).

    python -m bench.perf.levers --rounds 6
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.perf.common import banking77, machine

TASK = "feedback"


def _alternate(fns: dict, rounds: int) -> dict:
    seconds = {k: 0.0 for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name](r)
            seconds[name] += time.perf_counter() - t
    return {k: v / rounds for k, v in seconds.items()}


def shared_encode(args) -> dict:
    from learner import Learner, LearnerConfig
    from learner.features import FeatureCache

    texts, labels = banking77(limit=32 * (args.rounds + 2) * 2, seed=args.seed)
    new = Learner(LearnerConfig(model=args.model, device="cpu", mode="head"))
    old = Learner(LearnerConfig(model=args.model, device="cpu", mode="head"))
    old.features = FeatureCache(old._encode, recent_capacity=0)   # the cache before issue #6

    def step(learner, r, offset):
        bx = texts[offset + 32 * r: offset + 32 * r + 32]
        by = labels[offset + 32 * r: offset + 32 * r + 32]
        learner.predict_many(TASK, bx)
        if learner is new:
            learner.features.get(bx, store=False)            # DriftWatch._embed, head mode
        else:
            with torch.inference_mode():
                learner.model.encode(bx)                       # DriftWatch before issue #6
        learner.learn_many(TASK, bx, by)

    half = len(texts) // 2
    for learner, offset in ((new, 0), (old, half)):
        learner.learn_many(TASK, texts[offset:offset + 32], labels[offset:offset + 32])
    s = _alternate({"one_encoder_pass": lambda r: step(new, r + 1, 0),
                    "three_encoder_passes": lambda r: step(old, r + 1, half)}, args.rounds)
    return {"seconds_per_batch_of_32": s, "speedup": s["three_encoder_passes"] / s["one_encoder_pass"]}


def sorted_sub_batches(args) -> dict:
    import learner.model as lm
    from learner.model import TextClassifier, default_model_path

    model = TextClassifier(args.model or default_model_path()).eval()
    texts, _ = banking77(limit=32 * (args.rounds + 1), seed=args.seed)
    sub = lm.CPU_SUB_BATCH

    def encode(r, sub_batch):
        lm.CPU_SUB_BATCH = sub_batch
        with torch.inference_mode():
            model.encode(texts[32 * r:32 * r + 32])

    s = _alternate({"sorted_sub_batches_of_8": lambda r: encode(r, 8),
                    "one_padded_batch": lambda r: encode(r, 10 ** 9)}, args.rounds)
    lm.CPU_SUB_BATCH = sub
    return {"seconds_per_32_texts": s, "speedup": s["one_padded_batch"] / s["sorted_sub_batches_of_8"]}


def cleaning_hints(args) -> dict:
    from bench.perf.ingest import payloads
    from streams import cleaning
    from streams.cleaning import clean_event
    from streams.dedup import Deduplicator
    from streams.records import decode_event

    events = payloads(5000, seed=args.seed)
    fast = cleaning._mask_pii

    def slow(text):
        if "@" in text:
            text = cleaning._EMAIL.sub(cleaning.EMAIL, text)
        text = cleaning._URL.sub(cleaning.URL, text)
        text = cleaning._CARD.sub(cleaning._mask_card, text)
        return cleaning._PHONE.sub(cleaning._mask_phone, text)

    def stage(r, mask):
        cleaning._mask_pii = mask
        dedup = Deduplicator()
        for raw in events:
            event = clean_event(decode_event(raw, task="feedback", received_at=0.0))
            dedup.seen_id("feedback", event.id)

    try:
        s = _alternate({"with_hints": lambda r: stage(r, fast), "unconditional": lambda r: stage(r, slow)},
                       args.rounds)
    finally:
        cleaning._mask_pii = fast
    return {"events_per_second": {k: len(events) / v for k, v in s.items()},
            "speedup": s["unconditional"] / s["with_hints"]}


def tokenize_share(args) -> dict:
    from learner import Learner, LearnerConfig

    texts, labels = banking77(limit=32 * (args.rounds + 2), seed=args.seed)
    learner = Learner(LearnerConfig(model=args.model, device="cpu", mode="lora"))
    tok = upd = 0.0
    for r in range(args.rounds + 1):
        bx, by = texts[32 * r:32 * r + 32], labels[32 * r:32 * r + 32]
        t = time.perf_counter()
        learner.model.tokenize(bx)
        t1 = time.perf_counter()
        learner.learn_many(TASK, bx, by)
        if r:
            tok += t1 - t
            upd += time.perf_counter() - t1
    return {"tokenize_seconds": tok / args.rounds, "update_seconds": upd / args.rounds,
            "tokenize_fraction": tok / upd}


LEVERS = {"shared_encode": shared_encode, "sorted_sub_batches": sorted_sub_batches,
          "cleaning_hints": cleaning_hints, "tokenize_share": tokenize_share}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.levers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(LEVERS))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = {name: LEVERS[name](args) for name in args.only.split(",") if name}
    out["machine"] = machine()
    text = json.dumps({"levers": out}, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
