"""Faithfulness of token explanations: deleting the top-attributed words must hurt more than
deleting random ones (`streamlearner bench explain`).

Protocol: a learner with the worker's default settings learns the BANKING77 training set
as a stream (micro-batches, one pass, replay); then, for a seeded sample of the test set,
each text is explained (IG and gradient×input) for the predicted label, and the predicted
class probability is measured again after deleting (a) the top-k attributed words and
(b) k random words (seeded), k = 1..5. A case counts as faithful at k=3 when the top-3
deletion lowers the probability more than the random one. Texts with fewer than 4 words
are skipped (deleting 3 would leave nothing to compare). Latency per explanation is
wall time on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from bench.continual import read_csv

ROOT = Path(__file__).resolve().parent.parent
K_MAX = 5


def delete_words(text: str, spans: list[tuple[int, int]], drop: set[int]) -> str:
    kept = [text[a:b] for i, (a, b) in enumerate(spans) if i not in drop]
    return " ".join(kept)


def train_stream(learner, task: str, rows: list[tuple[str, str]], batch_size: int, bar=None) -> None:
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        learner.learn_many(task, [t for t, _ in chunk], [y for _, y in chunk])
        if bar is not None:
            bar.update(len(chunk))


def prob_of(model, task: str, texts: list[str], label: str) -> list[float]:
    """p(label | text) from a learner or a serving snapshot (what /explain explains)."""
    import torch

    labels = model.labels(task)
    net = model.model
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            probs = net.head(task)(net.encode(list(texts))).float().softmax(-1)   # (B, N)
    finally:
        net.train(was_training)
    return probs[:, labels.index(label)].tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamlearner bench explain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=str(ROOT / "data/banking77/train.csv"))
    ap.add_argument("--test", default=str(ROOT / "data/banking77/test.csv"))
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="category")
    ap.add_argument("--n", type=int, default=400, help="test texts explained (seeded sample)")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--steps", type=int, default=32, help="IG steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="encoder (default: bundled MiniLM)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/explain"))
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    from learner import Learner, LearnerConfig
    from learner.explain import METHODS, Explainer

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train = read_csv(args.train, args.text_column, args.label_column)
    test = read_csv(args.test, args.text_column, args.label_column)
    rng.shuffle(train)
    train = train[:args.train_limit] if args.train_limit else train
    learner = Learner(LearnerConfig(model=args.model, device="cpu", seed=args.seed))
    task = "feedback"
    started = time.perf_counter()
    with tqdm(total=len(train), desc="learn stream", unit="ev") as bar:
        train_stream(learner, task, train, args.batch_size, bar)
    train_seconds = time.perf_counter() - started
    preds = learner.predict_many(task, [t for t, _ in test])
    test_acc = sum(p.label == y for p, (_, y) in zip(preds, test)) / len(test)

    candidates = [t for t, _ in test if len(t.split()) >= 4]
    sample = rng.sample(candidates, min(args.n, len(candidates)))
    explainer = Explainer(learner, steps=args.steps)
    results: dict = {}
    for method in METHODS:
        drops_top = {k: [] for k in range(1, K_MAX + 1)}
        drops_rand = {k: [] for k in range(1, K_MAX + 1)}
        wins3, latencies, skipped = 0, [], 0
        for text in tqdm(sample, desc=f"explain {method}", unit="text"):
            ex = explainer.explain(task, text, method=method)
            latencies.append(ex.seconds)
            n = len(ex.words)
            if n < 4:
                skipped += 1
                continue
            order = sorted(range(n), key=lambda i: ex.scores[i], reverse=True)
            variants, keys = [], []
            for k in range(1, min(K_MAX, n - 1) + 1):
                variants.append(delete_words(text, ex.spans, set(order[:k])))
                variants.append(delete_words(text, ex.spans, set(rng.sample(range(n), k))))
                keys.append(k)
            probs = prob_of(learner, task, variants, ex.label)
            for j, k in enumerate(keys):
                drops_top[k].append(ex.probability - probs[2 * j])
                drops_rand[k].append(ex.probability - probs[2 * j + 1])
            if 3 in keys:
                j = keys.index(3)
                wins3 += probs[2 * j] < probs[2 * j + 1]
        n3 = len(drops_top[3])
        results[method] = {
            "texts": len(sample) - skipped,
            "faithful_fraction_top3": wins3 / max(1, n3),
            "mean_drop_top3": statistics.fmean(drops_top[3]) if n3 else None,
            "mean_drop_random3": statistics.fmean(drops_rand[3]) if n3 else None,
            "deletion_curve": {"k": list(drops_top),
                               "top": [statistics.fmean(v) if v else None for v in drops_top.values()],
                               "random": [statistics.fmean(v) if v else None for v in drops_rand.values()]},
            "latency_seconds": {"mean": statistics.fmean(latencies),
                                "p50": statistics.median(latencies),
                                "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))]},
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "explain", "train": Path(args.train).name, "test": Path(args.test).name,
              "train_events": len(train), "train_seconds": round(train_seconds, 1),
              "test_accuracy": test_acc, "explained": len(sample), "ig_steps": args.steps,
              "seed": args.seed, "learner_config": learner.metadata()["config"],
              "machine": _machine(), "methods": results,
              "target": {"faithful_fraction_top3": 0.8}}
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "results.md").write_text(_markdown(report))
    _plot(report, out / "deletion_curve.png")
    example = explainer.explain(task, "I still have not received my new card, it has been two weeks")
    (out / "example.html").write_text(example.to_html())
    render_png(example, out / "example.png")
    print(_markdown(report))
    return 0


def render_png(ex, path: Path) -> Path:
    """The explained text as a picture: each word's background by its attribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 1.5), dpi=120)
    fig.text(0.01, 0.78, f"{ex.task} → {ex.label}  (p = {ex.probability:.2f}, {ex.method}, "
                         f"model v{ex.model_version})", fontsize=11, weight="bold")
    peak = max((abs(x) for x in ex.scores), default=0.0) or 1.0
    renderer = fig.canvas.get_renderer()
    x = 0.01
    for word, score in zip(ex.words, ex.scores):
        color = (0.13, 0.55, 0.13) if score >= 0 else (0.78, 0.12, 0.12)
        alpha = min(1.0, abs(score) / peak)
        t = fig.text(x, 0.35, word, fontsize=14,
                     bbox={"facecolor": (*color, alpha * 0.85), "edgecolor": "none", "pad": 2.5})
        x += t.get_window_extent(renderer).width / fig.bbox.width + 0.008
    fig.text(0.01, 0.05, "green: evidence for the label, red: against; darker = stronger",
             fontsize=8, color="gray")
    fig.savefig(path)
    plt.close(fig)
    return path


def _machine() -> dict:
    import os
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "device": "cpu",
            "python": platform.python_version()}


def _markdown(r: dict) -> str:
    lines = [f"# Explanation faithfulness ({r['train']} → {r['test']})", "",
             f"Learner trained on {r['train_events']} streamed events in {r['train_seconds']} s; "
             f"test accuracy {r['test_accuracy']:.3f}; {r['explained']} test texts explained.", "",
             "| method | faithful at k=3 (target ≥ 0.80) | mean drop, top-3 | mean drop, random 3 | latency p50 / p95 |",
             "|---|---|---|---|---|"]
    for m, v in r["methods"].items():
        lat = v["latency_seconds"]
        lines.append(f"| {m} | {v['faithful_fraction_top3']:.3f} | {v['mean_drop_top3']:.3f} | "
                     f"{v['mean_drop_random3']:.3f} | {lat['p50'] * 1000:.0f} / {lat['p95'] * 1000:.0f} ms |")
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for m, v in r["methods"].items():
        c = v["deletion_curve"]
        ax.plot(c["k"], c["top"], marker="o", label=f"{m}: top-k words deleted")
    first = next(iter(r["methods"].values()))["deletion_curve"]
    ax.plot(first["k"], first["random"], marker="x", linestyle="--", color="gray",
            label="k random words deleted")
    ax.set_xlabel("words deleted (k)")
    ax.set_ylabel("mean drop of p(predicted)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
