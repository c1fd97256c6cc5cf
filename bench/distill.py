"""Distillation: a student cut from the teacher's first layers, trained on the teacher's
softened logits, against the teacher it came from (`streamlearner bench distill`).

Per data set, in one run: a teacher with the worker's default settings learns the
training set as a stream (micro-batches, one pass, replay); the student (first
``--layers`` layers, heads copied) is distilled on the teacher's replay memory plus the
last ``--recent`` streamed texts; both are scored on the test set, and single-text predict latency is
measured for both, interleaved text by text so that machine noise hits both alike.
Targets (issue #7): student accuracy >= 95% of the teacher's, >= 2.5x lower latency.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.continual import read_csv
from bench.explain import _machine, train_stream

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {
    "banking77": ("data/banking77/train.csv", "data/banking77/test.csv", "text", "category", "feedback"),
    "phrasebank": ("data/financial_phrasebank/phrasebank50agree_train.csv",
                   "data/financial_phrasebank/phrasebank50agree_test.csv", "text", "label", "market"),
}


def accuracy(model, task: str, rows: list[tuple[str, str]]) -> float:
    preds = model.predict_many(task, [t for t, _ in rows])
    return sum(p.label == y for p, (_, y) in zip(preds, rows)) / len(rows)


def latency(teacher, student, task: str, texts: list[str]) -> dict:
    out = {"teacher": [], "student": []}
    for model in (teacher, student):   # warm-up
        model.predict_many(task, texts[:5])
    for text in texts:
        for name, model in (("teacher", teacher), ("student", student)):
            t0 = time.perf_counter()
            model.predict_many(task, [text])
            out[name].append(time.perf_counter() - t0)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]
    return {name: {"p50_seconds": statistics.median(xs), "p99_seconds": pct(xs, 0.99)}
            for name, xs in out.items()}


def run_dataset(name: str, args, tqdm) -> dict:
    from learner import Learner, LearnerConfig
    from learner.distill import DistillConfig, Sample, distill, make_student

    train_path, test_path, text_col, label_col, task = DATASETS[name]
    rng = random.Random(args.seed)
    train = read_csv(str(ROOT / train_path), text_col, label_col)
    test = read_csv(str(ROOT / test_path), text_col, label_col)
    rng.shuffle(train)
    if args.train_limit:
        train = train[:args.train_limit]
    teacher = Learner(LearnerConfig(device="cpu", seed=args.seed))
    t0 = time.perf_counter()
    with tqdm(total=len(train), desc=f"{name}: teacher learns stream", unit="ev") as bar:
        train_stream(teacher, task, train, args.batch_size, bar)
    teacher_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        student = make_student(teacher, tmp, layers=args.layers)
        samples = [Sample(m.task, m.text, m.label) for m in teacher.replay.sample(len(teacher.replay))]
        samples += [Sample(task, t, y) for t, y in train[-args.recent:]]  # recent stream text
        cfg = DistillConfig(layers=args.layers, epochs=args.epochs, seed=args.seed)
        steps_total = cfg.epochs * (len(samples) + cfg.batch_size - 1) // cfg.batch_size
        with tqdm(total=steps_total, desc=f"{name}: distil", unit="step") as bar:
            stats = distill(teacher, student, samples, cfg,
                            progress=lambda s, n, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
        acc_t, acc_s = accuracy(teacher, task, test), accuracy(student, task, test)
        lat = latency(teacher, student, task, [t for t, _ in rng.sample(test, min(300, len(test)))])
    speedup = lat["teacher"]["p50_seconds"] / lat["student"]["p50_seconds"]
    return {"task": task, "train_events": len(train), "test_events": len(test),
            "teacher_accuracy": acc_t, "student_accuracy": acc_s,
            "accuracy_ratio": acc_s / acc_t, "latency": lat, "speedup_p50": speedup,
            "speedup_p99": lat["teacher"]["p99_seconds"] / lat["student"]["p99_seconds"],
            "teacher_stream_seconds": round(teacher_seconds, 1), "distill": stats,
            "teacher_layers": teacher.model.encoder.config.num_hidden_layers,
            "student_layers": args.layers,
            "meets_targets": acc_s >= 0.95 * acc_t and speedup >= 2.5,
            "teacher_config": teacher.metadata()["config"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamlearner bench distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="banking77,phrasebank")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--recent", type=int, default=2000,
                    help="last N streamed texts added to the replay memory for distillation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/distill"))
    args = ap.parse_args(argv)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {sorted(DATASETS)}")

    import torch
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    report = {"benchmark": "distill", "seed": args.seed, "machine": _machine(),
              "targets": {"accuracy_ratio": 0.95, "speedup": 2.5}, "datasets": {}}
    for name in names:
        report["datasets"][name] = run_dataset(name, args, tqdm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "results.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    lines = ["# Distillation: student vs teacher", "",
             "| data set | teacher acc | student acc | ratio (≥ 0.95) | teacher p50 / p99 | "
             "student p50 / p99 | speed-up p50 (≥ 2.5) |", "|---|---|---|---|---|---|---|"]
    for name, d in r["datasets"].items():
        t, s = d["latency"]["teacher"], d["latency"]["student"]
        lines.append(f"| {name} ({d['teacher_layers']}→{d['student_layers']} layers) | "
                     f"{d['teacher_accuracy']:.3f} | {d['student_accuracy']:.3f} | "
                     f"{d['accuracy_ratio']:.3f} | {t['p50_seconds'] * 1000:.1f} / {t['p99_seconds'] * 1000:.1f} ms | "
                     f"{s['p50_seconds'] * 1000:.1f} / {s['p99_seconds'] * 1000:.1f} ms | {d['speedup_p50']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
