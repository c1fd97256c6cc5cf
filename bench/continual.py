"""Continual-learning benchmark: ``streamlearner bench continual``.

Streams labeled CSVs through the same :class:`~learner.learner.Learner` the worker uses,
task by task in micro-batches (every example once; only replay repeats data), and after
each task measures accuracy on every task seen so far.

Scenarios:
  class-incremental  one CSV pair; its labels split into ``--tasks`` disjoint groups in a
                     seeded order; one head, no task id at test time.
  domain             ``--train A.csv,B.csv --test A.csv,B.csv``: one task (and head) per source.

``--strategy naive,er,joint`` runs each (``+`` composes, ``joint`` is offline training on
all the data for ``--joint-epochs``); ``--adv-epsilon 0,1`` and ``--bias-correction ace,none``
multiply the runs. Writes results.json, accuracy.png (heatmaps), average_accuracy.png and
results.md to ``--out``.

    streamlearner bench continual --train data/banking77/train.csv --test data/banking77/test.csv \\
        --label-column category --tasks 7 --strategy naive,er,derpp,joint --out /tmp/ci
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .perturb import perturb_all
from .report import write_report

__all__ = ["main"]


class BenchError(ValueError):
    """Bad input, reported before any training starts."""


@dataclass
class Task:
    name: str        # reported name
    head: str        # learner task (head) it trains and is scored with
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]


def read_csv(path: str, text_col: str, label_col: str) -> list[tuple[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"{path}: no such file")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in (text_col, label_col) if c not in columns]
        if missing:
            raise BenchError(f"{path}: missing column(s) {missing}; columns are {columns} "
                             f"(use --text-column / --label-column)")
        rows = [(r[text_col] or "", r[label_col] or "") for r in reader]
    rows = [(t.strip(), y.strip()) for t, y in rows if t and t.strip() and y and y.strip()]
    if not rows:
        raise BenchError(f"{path}: no rows with a non-empty text and label")
    return rows


def _subsample(rows: list[tuple[str, str]], limit: int | None, rng: random.Random) -> list[tuple[str, str]]:
    if limit is None or len(rows) <= limit:
        return rows
    return rng.sample(rows, limit)


def _per_file(spec: str, n: int) -> list[str]:
    names = spec.split(",")
    if len(names) not in (1, n):
        raise BenchError(f"column list {spec!r} needs 1 or {n} names (one per --train file)")
    return names * n if len(names) == 1 else names


def _limits(spec: str | None, n: int) -> list[int | None]:
    if not spec:
        return [None] * n
    try:
        values = [int(v) or None for v in spec.split(",")]
    except ValueError:
        raise BenchError(f"--limit-train must be integers, got {spec!r}") from None
    if len(values) not in (1, n) or any(v is not None and v < 1 for v in values):
        raise BenchError(f"--limit-train needs 1 or {n} non-negative integers (0 = all), got {spec!r}")
    return values * n if len(values) == 1 else values


def build_tasks(args: argparse.Namespace) -> list[Task]:
    trains, tests = args.train.split(","), args.test.split(",")
    if len(trains) != len(tests):
        raise BenchError(f"--train has {len(trains)} file(s) but --test has {len(tests)}")
    rng = random.Random(args.seed)
    text_cols, label_cols = _per_file(args.text_column, len(trains)), _per_file(args.label_column, len(trains))
    pairs = [(read_csv(a, tc, lc), read_csv(b, tc, lc))
             for a, b, tc, lc in zip(trains, tests, text_cols, label_cols)]
    for (train, test), name in zip(pairs, tests):
        unseen = sorted({y for _, y in test} - {y for _, y in train})
        if unseen:
            raise BenchError(f"{name}: test label(s) never seen in training: {unseen[:5]}")
    if args.scenario == "domain":
        names = args.task_names.split(",") if args.task_names else [Path(p).stem for p in trains]
        if len(names) != len(pairs) or len(set(names)) != len(names):
            raise BenchError(f"--task-names needs {len(pairs)} distinct names, got {names}")
        if len(pairs) < 2:
            raise BenchError("scenario domain needs at least two --train/--test files")
        limits = _limits(args.limit_train, len(pairs))
        return [Task(n, n, _subsample(rng.sample(tr, len(tr)), lim, rng), te)
                for n, (tr, te), lim in zip(names, pairs, limits)]
    if len(pairs) != 1:
        raise BenchError("scenario class-incremental takes one --train and one --test file")
    train, test = pairs[0]
    labels = sorted({y for _, y in train})
    if args.tasks > len(labels):
        raise BenchError(f"--tasks {args.tasks} is more than the {len(labels)} labels in {trains[0]}")
    rng.shuffle(labels)
    k, r = divmod(len(labels), args.tasks)
    tasks, start = [], 0
    for i in range(args.tasks):
        group = set(labels[start : start + k + (i < r)])
        start += k + (i < r)
        tr = [row for row in train if row[1] in group]
        tasks.append(Task(f"task{i + 1}", args.task_names or "classes",
                          _subsample(rng.sample(tr, len(tr)), _limits(args.limit_train, 1)[0], rng),
                          [row for row in test if row[1] in group]))
    return tasks


@dataclass
class Run:
    key: str
    strategy: str
    bias_correction: str
    adv_epsilon: float


def plan_runs(args: argparse.Namespace) -> list[Run]:
    from learner.config import parse_strategy

    runs = []
    for spec in args.strategy.split(","):
        spec = spec.strip()
        if spec != "joint":
            try:
                parse_strategy(spec)
            except ValueError as e:
                raise BenchError(f"--strategy: {e}") from None
        replays = spec != "joint" and any(n in ("er", "derpp") for n in parse_strategy(spec))
        corrections = args.bias_correction.split(",")
        if any(bc not in ("ace", "none") for bc in corrections):
            raise BenchError(f"--bias-correction must be ace, none or both, got {args.bias_correction!r}")
        if not replays:  # ACE acts on replayed batches only: one run is enough
            corrections = corrections[:1]
        for bc in corrections:
            for eps in (float(e) for e in args.adv_epsilon.split(",")):
                if eps > 0 and args.mode == "head":
                    raise BenchError("--adv-epsilon > 0 needs --mode lora or full")
                key = " ".join([spec] + (["no-ace"] if bc == "none" and spec != "joint" else [])
                               + ([f"fgm={eps:g}"] if eps else []))
                runs.append(Run(key, spec, "none" if spec == "joint" else bc, eps))
    return runs


def make_learner(args, run: Run, capacity: int):
    from learner import Learner, LearnerConfig, MemoryConfig

    config = LearnerConfig(model=args.model, device=args.device, mode=args.mode,
                           strategy="naive" if run.strategy == "joint" else run.strategy,
                           bias_correction=run.bias_correction, adv_epsilon=run.adv_epsilon,
                           steps_per_batch=args.steps_per_batch, seed=args.seed, lr=args.lr,
                           head_lr=args.head_lr, max_length=args.max_length, lora_rank=args.lora_rank,
                           lora_layers=args.lora_layers, ewc_lambda=args.ewc_lambda,
                           derpp_alpha=args.derpp_alpha, lwf_alpha=args.lwf_alpha)
    return Learner(config, MemoryConfig(capacity=capacity, replay_ratio=args.replay_ratio, seed=args.seed))


def evaluate(learner, task: Task, texts: list[str] | None = None) -> float:
    texts = texts if texts is not None else [t for t, _ in task.test]
    preds = learner.predict_many(task.head, texts)
    return sum(p.label == y for p, (_, y) in zip(preds, task.test)) / len(task.test)


def run_one(args, run: Run, tasks: list[Task], capacity: int, pinned, bar) -> dict:
    learner = make_learner(args, run, capacity)
    if pinned is not None:
        learner.pin_features(list(pinned), pinned_tensor(pinned))
    started = time.perf_counter()
    K, B = len(tasks), args.batch_size
    matrix: list[list[float | None]] = []
    n_train = 0
    if run.strategy == "joint":
        rows = [(t.head, x, y) for t in tasks for x, y in t.train]
        rng = random.Random(args.seed)
        for _ in range(args.joint_epochs):
            rng.shuffle(rows)
            for i in range(0, len(rows), B):
                chunk = rows[i : i + B]
                for head in dict.fromkeys(h for h, _, _ in chunk):
                    part = [(x, y) for h, x, y in chunk if h == head]
                    learner.learn_many(head, [x for x, _ in part], [y for _, y in part])
                n_train += len(chunk)
                bar.update(len(chunk))
        matrix = [[evaluate(learner, t) for t in tasks]]
    else:
        for i, task in enumerate(tasks):
            for s in range(0, len(task.train), B):
                chunk = task.train[s : s + B]
                learner.learn_many(task.head, [x for x, _ in chunk], [y for _, y in chunk])
                n_train += len(chunk)
                bar.update(len(chunk))
            matrix.append([evaluate(learner, t) if j <= i else None for j, t in enumerate(tasks)])
    wall = time.perf_counter() - started
    final = matrix[-1]
    out = {
        "strategy": run.strategy, "bias_correction": run.bias_correction, "adv_epsilon": run.adv_epsilon,
        "final_avg_acc": sum(final) / K, "acc_matrix": matrix,
        "avg_acc_after_task": [sum(a for a in row if a is not None) / (i + 1) for i, row in enumerate(matrix)],
        "wall_seconds": round(wall, 1), "samples_per_second": round(n_train / wall, 1), "train_samples": n_train,
    }
    if len(matrix) == K and K > 1:
        own = [matrix[j][j] for j in range(K)]
        out["avg_forgetting"] = sum(max(matrix[i][j] for i in range(j, K - 1)) - final[j] for j in range(K - 1)) / (K - 1)
        out["bwt"] = sum(final[j] - own[j] for j in range(K - 1)) / (K - 1)
    else:  # joint: one evaluation, nothing to forget
        own = final
        out["avg_forgetting"], out["bwt"] = 0.0, 0.0
    if args.scenario == "domain":
        out["final_acc_per_task"] = {t.name: a for t, a in zip(tasks, final)}
        out["acc_after_own_task"] = {t.name: a for t, a in zip(tasks, own)}
    if args.perturb_rate > 0:
        out["robust_acc_per_task"] = {t.name: evaluate(learner, t, perturb_all([x for x, _ in t.test],
                                      rate=args.perturb_rate, seed=args.seed)) for t in tasks}
        out["robust_avg_acc"] = sum(out["robust_acc_per_task"].values()) / K
    return out


def pinned_tensor(pinned: dict):
    import torch

    return torch.stack(list(pinned.values()))


def load_features(args, tasks: list[Task]) -> dict | None:
    """Frozen encoder: encode every text once (or read ``--feature-cache``) for all runs."""
    if args.mode != "head":
        return None
    from learner.features import encode_once

    texts = list(dict.fromkeys(x for t in tasks for x, _ in t.train + t.test))
    if args.perturb_rate > 0:
        texts += [x for t in tasks for x in perturb_all([x for x, _ in t.test], rate=args.perturb_rate, seed=args.seed)]
    return encode_once(texts, model=args.model, device=args.device, max_length=args.max_length,
                       cache=args.feature_cache,
                       log=lambda message: print(message, file=sys.stderr))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from learner import LearnerConfig

    p = argparse.ArgumentParser(prog="streamlearner bench continual", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="CSV, or comma-separated CSVs (domain)")
    p.add_argument("--test", required=True, help="CSV, or comma-separated CSVs (domain)")
    p.add_argument("--text-column", default="text", help="one name, or one per --train file")
    p.add_argument("--label-column", default="label", help="one name, or one per --train file")
    p.add_argument("--scenario", choices=["class-incremental", "domain"], default="class-incremental")
    p.add_argument("--tasks", type=int, default=5, help="label groups (class-incremental)")
    p.add_argument("--task-names", default=None, help="domain: comma-separated task names; "
                   "class-incremental: the head's name (default 'classes')")
    p.add_argument("--strategy", default="naive,er,joint", help="comma-separated; '+' composes; joint = offline")
    p.add_argument("--mode", choices=["head", "lora", "full"], default="head")
    p.add_argument("--bias-correction", default="ace", help="ace, none, or both 'ace,none'")
    p.add_argument("--adv-epsilon", default="0", help="FGM epsilon(s), comma-separated; 0 = off")
    p.add_argument("--perturb-rate", type=float, default=0.0,
                   help="> 0: also score a seeded perturbed test copy (typos + word drops at this rate)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory-per-class", type=int, default=None, help="memory = this x number of labels (default 10)")
    mem.add_argument("--memory", type=int, default=None, help="total memory size")
    p.add_argument("--replay-ratio", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps-per-batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    p.add_argument("--head-lr", type=float, default=1e-2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-layers", type=int, default=0, help="LoRA on the top N layers only (0 = all)")
    p.add_argument("--ewc-lambda", type=float, default=LearnerConfig.ewc_lambda)
    p.add_argument("--derpp-alpha", type=float, default=LearnerConfig.derpp_alpha)
    p.add_argument("--lwf-alpha", type=float, default=LearnerConfig.lwf_alpha)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; head mode trains on 1 after encoding)")
    p.add_argument("--joint-epochs", type=int, default=3)
    p.add_argument("--limit-train", default=None,
                   help="seeded subsample of training rows: N for every task, or one per domain task (0 = all)")
    p.add_argument("--model", default=None, help="encoder directory (default: bundled MiniLM)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--feature-cache", default=None, help="head mode: safetensors file reused across invocations")
    p.add_argument("--out", required=True)
    p.add_argument("--tracking-uri", default=None,
                   help="log every run to MLflow (default: TRACKING_URI / MLFLOW_TRACKING_URI; "
                        "unset: no tracking)")
    p.add_argument("--experiment", default="bench-continual", help="MLflow experiment")
    return p.parse_args(argv)


def track(args, report: dict, out: Path) -> None:
    """Each run as an MLflow run: its settings, accuracy after each task as steps, the plots."""
    from tracking.config import TrackingConfig
    from tracking.mlflow_tracker import Tracker

    uri = args.tracking_uri or TrackingConfig(uri=os.environ.get("TRACKING_URI", "")).resolve_uri()
    if not uri:
        return
    tracker = Tracker(uri, experiment=args.experiment, queue_size=100_000)
    shared = {k: report[k] for k in ("scenario", "mode", "memory", "batch_size", "steps_per_batch",
                                     "seed", "backbone")}
    for key, r in report["results"].items():
        run = tracker.start_run(f"continual {key}", params={
            **shared, "strategy": r["strategy"], "bias_correction": r["bias_correction"],
            "adv_epsilon": r["adv_epsilon"], "lr": args.lr, "head_lr": args.head_lr,
            "replay_ratio": args.replay_ratio, "tasks": len(report["tasks"])})
        for step, acc in enumerate(r["avg_acc_after_task"], 1):
            run.log_metrics({"avg_acc_after_task": acc}, step=step)
        run.log_metrics({k: r[k] for k in ("final_avg_acc", "avg_forgetting", "bwt",
                                           "wall_seconds", "samples_per_second")
                         if isinstance(r.get(k), (int, float))}, step=len(r["avg_acc_after_task"]))
        for name in ("results.json", "results.md", "accuracy.png", "average_accuracy.png"):
            if (out / name).is_file():
                run.log_artifact(out / name)
        run.end()
    if not tracker.close(timeout=60):
        print("streamlearner bench continual: some tracking calls did not finish", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.tasks < 1 or args.batch_size < 1 or args.steps_per_batch < 1:
            raise BenchError("--tasks, --batch-size and --steps-per-batch must be >= 1")
        tasks = build_tasks(args)
        runs = plan_runs(args)
        n_classes = len({(t.head, y) for t in tasks for _, y in t.train})
        if args.memory is not None:
            if args.memory < n_classes:
                raise BenchError(f"--memory {args.memory} is smaller than the {n_classes} classes")
            capacity = args.memory
        else:
            per_class = 10 if args.memory_per_class is None else args.memory_per_class
            if per_class < 1:
                raise BenchError(f"--memory-per-class must be >= 1, got {per_class}")
            capacity = per_class * n_classes
        from learner import LearnerConfig

        LearnerConfig(model=args.model, device=args.device, mode=args.mode, steps_per_batch=args.steps_per_batch,
                      lr=args.lr, head_lr=args.head_lr, max_length=args.max_length)
    except ValueError as e:
        print(f"streamlearner bench continual: {e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    encode_started = time.perf_counter()
    pinned = load_features(args, tasks)
    encode_seconds = time.perf_counter() - encode_started
    if args.mode == "head" and not args.threads:
        # Head updates are tiny ops: thread hand-offs cost more than they save (5-10x on 2 busy cores).
        torch.set_num_threads(1)
    per_run = sum(len(t.train) for t in tasks)
    total = sum(per_run * (args.joint_epochs if r.strategy == "joint" else 1) for r in runs)
    results = {}
    with tqdm(total=total, unit="ex", desc="bench continual", file=sys.stderr) as bar:
        for run in runs:
            bar.set_postfix_str(run.key)
            results[run.key] = run_one(args, run, tasks, capacity, pinned, bar)
    candidates = [k for k in results if results[k]["strategy"] not in ("joint", "naive")] or \
                 [k for k in results if results[k]["strategy"] != "joint"]
    report = {
        "scenario": args.scenario,
        "tasks": [{"name": t.name, "labels": sorted({y for _, y in t.train}), "train": len(t.train),
                   "test": len(t.test)} for t in tasks],
        "memory_per_class": capacity / n_classes, "memory": capacity, "mode": args.mode,
        "backbone": args.model or "all-MiniLM-L6-v2 (bundled)",
        "device": args.device, "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "steps_per_batch": args.steps_per_batch, "seed": args.seed,
        "encode_seconds": round(encode_seconds, 1), "feature_cache": args.feature_cache,
        "total_seconds": round(time.perf_counter() - encode_started, 1),
        "perturb_rate": args.perturb_rate, "argv": sys.argv[1:] if argv is None else list(argv),
        "best": max(candidates, key=lambda k: results[k]["final_avg_acc"]) if candidates else None,
        "results": results,
    }
    write_report(report, Path(args.out))
    track(args, report, Path(args.out))
    print(Path(args.out, "results.md").read_text())
    return 0
