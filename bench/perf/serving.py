"""Serving benchmark: single-event predict latency p50/p99 and batch throughput.

A head-mode learner (the worker's default) first learns a few BANKING77 micro-batches, then
its published version — a :class:`~serving.snapshot.ModelSnapshot` built through the
product's artifact path — answers texts it has never seen (the BANKING77 test split, so no
feature-cache hit flatters it):

* ``single``: ``predict_many(task, [text])`` one text at a time (a one-text ``/predict``);
* ``single_proba``: ``predict_proba`` of one text (the full distribution ``/predict`` returns);
* ``single_under_training``: one-text predictions on the serving thread every 50 ms while the
  model thread trains on the stream (micro-batches of 32) — the all-in-one worker's design;
  ``single_under_training_shared`` the same with predictions and training on one thread (the
  design before the split, the baseline of the ratio);
* ``batch``: texts/s of ``predict_many`` over batches of 32 and 256.

    python -m bench.perf.serving --singles 200
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time

from bench.perf.common import ROOT, banking77, machine, summary

TASK = "feedback"


def _unseen(limit: int) -> list[str]:
    with open(ROOT / "data" / "banking77" / "test.csv", newline="") as f:
        return [r["text"] for r in csv.DictReader(f)][:limit]


def _timed(fn, items) -> list[float]:
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t)
    return out


async def _under_training(serving, learner, texts, train_texts, train_labels, *, n: int,
                          batch: int, shared: bool) -> list[float]:
    from streams.handoff import ModelThread

    latencies: list[float] = []
    with ModelThread(queue_size=2) as model, ModelThread(queue_size=2) as own:
        api = model if shared else own
        stop = asyncio.Event()

        async def stream():
            i = 0
            while not stop.is_set():
                bx = train_texts[i:i + batch] or train_texts[:batch]
                by = train_labels[i:i + batch] or train_labels[:batch]
                await model.run(learner.predict_many, TASK, bx)
                await model.run(learner.learn_many, TASK, bx, by)
                i = (i + batch) % max(1, len(train_texts) - batch)

        trainer = asyncio.create_task(stream())
        for text in texts[:n]:
            t = time.perf_counter()
            await api.run(serving.predict_many, TASK, [text])
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.05)
        stop.set()
        await trainer
    return latencies


def run(args: argparse.Namespace) -> dict:
    import torch

    from learner import Learner, LearnerConfig
    from learner.model import default_model_path
    from lifecycle.publishing import artifact_from_learner
    from serving.snapshot import ModelSnapshot, base_classifier

    learner = Learner(LearnerConfig(model=args.model, device=args.device, mode=args.mode))
    train_texts, train_labels = banking77(limit=args.train_batches * 16 + 32 * args.under_training,
                                          seed=args.seed)
    for i in range(args.train_batches):
        learner.learn_many(TASK, train_texts[16 * i:16 * i + 16], train_labels[16 * i:16 * i + 16])
    from serving.config import ServeConfig

    defaults = ServeConfig()   # the serving defaults unless the caller names others
    precision = getattr(args, "precision", None) or defaults.precision
    trace = defaults.trace if getattr(args, "trace", None) is None else args.trace
    base = base_classifier(args.model or default_model_path(), max_length=learner.config.max_length,
                           device=torch.device(learner.device), precision=precision, trace=trace)
    serving = ModelSnapshot.from_artifact(artifact_from_learner(learner), base)
    need = 2 * args.singles + args.under_training + 2 * args.batch_texts + 8
    unseen = _unseen(need)
    warm, unseen = unseen[:8], unseen[8:]
    for text in warm:
        serving.predict_many(TASK, [text])
    singles, unseen = unseen[:args.singles], unseen[args.singles:]
    probas, unseen = unseen[:args.singles], unseen[args.singles:]
    result = {
        "mode": args.mode,
        "precision": precision,
        "trace": trace,
        "dtype": str(next(base.encoder.parameters()).dtype),
        "labels": len(learner.labels(TASK)),
        "single": summary(_timed(lambda t: serving.predict_many(TASK, [t]), singles)),
        "single_proba": summary(_timed(lambda t: serving.predict_proba(TASK, [t]), probas)),
    }
    batch = {}
    for size in (32, 256):
        texts, unseen = unseen[:args.batch_texts], unseen[args.batch_texts:]
        chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
        seconds = sum(_timed(lambda c: serving.predict_many(TASK, c), chunks))
        batch[str(size)] = {"texts": len(texts), "texts_per_second": len(texts) / seconds}
    result["batch"] = batch
    if args.under_training:
        rest = train_texts[args.train_batches * 16:], train_labels[args.train_batches * 16:]
        for key, shared in (("single_under_training", False),
                            ("single_under_training_shared", True)):
            lat = asyncio.run(_under_training(serving, learner, unseen, *rest,
                                              n=args.under_training, batch=32, shared=shared))
            result[key] = summary(lat)
    result["single_p50_seconds"] = result["single"]["p50"]
    result["single_p99_seconds"] = result["single"]["p99"]
    result["batch_texts_per_second"] = batch["256"]["texts_per_second"]
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--singles", type=int, default=200, help="one-text predictions timed")
    p.add_argument("--batch-texts", type=int, default=512, help="texts per batch-size measurement")
    p.add_argument("--under-training", type=int, default=60,
                   help="one-text predictions timed while the model thread trains (0: skip)")
    p.add_argument("--train-batches", type=int, default=10, help="micro-batches learned first")
    p.add_argument("--mode", default="head", choices=["head", "lora", "full"])
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="serving copy's precision (default: SERVE_PRECISION's default)")
    p.add_argument("--trace", default=None, type=lambda v: v.lower() in ("1", "true", "yes"),
                   help="trace the serving encoder (default: SERVE_TRACE's default)")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    print(json.dumps({"serving": run(p.parse_args(argv)), "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
