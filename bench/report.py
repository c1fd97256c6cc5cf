"""results.json, accuracy heatmaps, average-accuracy plot and a markdown table for a benchmark run."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["write_report"]


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(report: dict) -> str:
    tasks = [t["name"] for t in report["tasks"]]
    domain = report["scenario"] == "domain"
    robust = report.get("perturb_rate", 0) > 0
    head = ["strategy", "final avg acc", "avg forgetting", "BWT"]
    if domain:
        head += [f"{t} final" for t in tasks] + [f"{t} after own task" for t in tasks]
    if robust:
        head += [f"perturbed acc (rate {report['perturb_rate']:g})"]
    head += ["wall s", "samples/s"]
    lines = [
        f"scenario **{report['scenario']}**, {len(tasks)} tasks, mode **{report['mode']}**, memory "
        f"{report['memory']} ({report['memory_per_class']:g}/class), batch {report['batch_size']}, "
        f"steps/batch {report['steps_per_batch']}, seed {report['seed']}, {report['backbone']}, "
        f"{report['device']} ({report['torch_threads']} threads). Best: **{report['best']}**.",
        "",
    ]
    if "total_seconds" in report:
        lines += [
            f"Whole invocation {report['total_seconds']:.0f} s, of which {report['encode_seconds']:.0f} s "
            "encoding texts once for the frozen encoder"
            + (" (read from the feature cache)" if report.get("feature_cache") and report["mode"] == "head" else "")
            + "; `wall s` below is each run's own stream (training + evaluations).",
            "",
        ]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, r in report["results"].items():
        row = [key, _fmt(r["final_avg_acc"]), _fmt(r["avg_forgetting"]), _fmt(r["bwt"])]
        if domain:
            row += [_fmt(r["final_acc_per_task"][t]) for t in tasks]
            row += [_fmt(r["acc_after_own_task"][t]) for t in tasks]
        if robust:
            row += [_fmt(r.get("robust_avg_acc"))]
        row += [f"{r['wall_seconds']:.0f}", f"{r['samples_per_second']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    results = report["results"]
    tasks = [t["name"] for t in report["tasks"]]
    n = len(results)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.8, 3.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.subplots_adjust(hspace=0.5, wspace=0.08)
    for index, (ax, (key, r)) in enumerate(zip(axes.flat, results.items())):
        m = np.array([[np.nan if a is None else a for a in row] for row in r["acc_matrix"]], dtype=float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"{key}\nfinal {r['final_avg_acc']:.3f}", fontsize=9)
        ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=7)
        ax.set_yticks(range(m.shape[0]), ["all (joint)"] if m.shape[0] == 1 and len(tasks) > 1
                      else [f"after {t}" for t in tasks[: m.shape[0]]], fontsize=7)
        if index % cols:
            ax.set_yticklabels([])
        if len(tasks) <= 8:
            for (i, j), v in np.ndenumerate(m):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.5 else "black")
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02)
    fig.suptitle(f"accuracy on each task's test set ({report['scenario']}, mode {report['mode']})", fontsize=10)
    fig.savefig(out / "accuracy.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(1, len(tasks) + 1)
    for index, (key, r) in enumerate(results.items()):
        if r["strategy"] == "joint":
            ax.axhline(r["final_avg_acc"], ls="--", color="k", lw=1, label=f"{key} (offline)")
        else:
            ax.plot(x[: len(r["avg_acc_after_task"])], r["avg_acc_after_task"], marker="os^"[index // 10],
                    ls="-" if index < 10 else ":", label=key)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("average accuracy over seen tasks")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out / "average_accuracy.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":  # re-render the markdown and plots of a results directory
    import sys

    for directory in sys.argv[1:]:
        write_report(json.loads((Path(directory) / "results.json").read_text()), Path(directory))
