"""Tuned vs default settings: ``streamlearner bench tune`` (``python -m bench.tune``).

Two of ``bench continual``'s streams, built by its code (same seeded task split and order):

* **banking77** — BANKING77 class-incremental, 7 tasks of 11 intents, one head. The study
  (``streamlearner tune``'s, tuning/study.py) sees **tasks 1-3 only**; the winner and the
  worker's defaults are then replayed on the **full 7-task stream** and scored like
  ``bench continual`` (test-set accuracy of every task after each task, final average).
* **domain** — BANKING77 (task ``feedback``, subsampled to ``--domain-feedback`` events, seeded)
  then Financial PhraseBank 50Agree (task ``market``). The study sees the first
  ``--domain-fraction`` of the stream (all of feedback and the start of market); both settings
  are replayed on the whole stream and scored on both test sets.

The objective never looks at a test set: it is the delayed-prequential accuracy of the tuning
segment, with probe forgetting bounded (tuning/study.py). The held-out part of the stream gives
the second, test-free comparison. Writes ``results.json``, ``results.md`` and, per stream,
``best.env``, ``summary.json``, ``history.png`` and ``importances.png`` to ``--out``.

    nice -n 10 python -m bench.tune --trials 40 --out bench/results/tune
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
B77 = ROOT / "data" / "banking77"
FPB = ROOT / "data" / "financial_phrasebank"


def _tasks(argv: list[str]):
    from bench import continual

    args = continual.parse_args(argv + ["--out", "unused"])
    return args, continual.build_tasks(args)


def banking77(seed: int):
    return _tasks(["--train", str(B77 / "train.csv"), "--test", str(B77 / "test.csv"),
                   "--label-column", "category", "--tasks", "7", "--seed", str(seed)])


def domain(seed: int, feedback: int):
    return _tasks(["--scenario", "domain", "--task-names", "feedback,market",
                   "--train", f"{B77 / 'train.csv'},{FPB / 'phrasebank50agree_train.csv'}",
                   "--test", f"{B77 / 'test.csv'},{FPB / 'phrasebank50agree_test.csv'}",
                   "--label-column", "category,label", "--limit-train", f"{feedback},0",
                   "--seed", str(seed)])


def _matrix_scores(matrix: list[list[float | None]]) -> dict:
    final = matrix[-1]
    k = len(final)
    out = {"final_avg_acc": sum(final) / k, "acc_matrix": matrix}
    if k > 1:
        out["avg_forgetting"] = sum(max(matrix[i][j] for i in range(j, k - 1)) - final[j]
                                    for j in range(k - 1)) / (k - 1)
    return out


def run_scenario(name: str, tasks, cut: int, base_env: dict, args, features) -> dict:
    from bench.continual import evaluate
    from tracking.mlflow_tracker import Tracker
    from tuning.space import SearchSpace
    from tuning.stream import from_segments
    from tuning.study import TuneOptions, finish, run_study

    names = [t.name for t in tasks]
    events = from_segments((t.name, t.head, t.train) for t in tasks)
    out = Path(args.out) / name
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)
    options = TuneOptions(trials=args.trials, study_name=f"bench-{name}", out=str(out),
                          storage=f"sqlite:///{(work / 'study.db').resolve()}", seed=args.seed,
                          max_forgetting=args.max_forgetting,
                          space=SearchSpace(fixed=tuple(tuple(f.split("=", 1)) for f in args.fixed)))

    def on_segment_end(segment: str, learner):
        i = names.index(segment)
        return [evaluate(learner, t) if j <= i else None for j, t in enumerate(tasks)]

    tracker = Tracker(f"sqlite:///{(Path(args.work) / 'mlflow.db').resolve()}",
                      experiment="bench-tune", queue_size=100_000,
                      artifact_location=(Path(args.work) / "mlruns").resolve().as_uri())
    parent = tracker.start_run(f"study bench-{name}", params={"trials": args.trials, "tune_events": cut,
                                                               "events": len(events)})
    started = time.perf_counter()
    study = run_study(base_env, events[:cut], options, features=features, tracker=tracker,
                      parent_run=parent)
    tuning_seconds = time.perf_counter() - started
    summary = finish(study, options, base_env, events, cut, features=features, tracker=tracker,
                     parent_run=parent, on_segment_end=on_segment_end,
                     stream_info={"scenario": name, "segments": names})
    parent.end()
    tracker.close(timeout=120)
    report = {"tasks": [{"name": t.name, "head": t.head, "train": len(t.train), "test": len(t.test)}
                        for t in tasks],
              "events": len(events), "tune_events": cut, "trials": summary["trials"],
              "tuning_seconds": round(tuning_seconds, 1), "best_trial": summary["best_trial"],
              "best_params": summary["best_params"], "defaults": summary["defaults"],
              "tune_objective": {"tuned": summary["best_value"], "defaults": summary["defaults_value"]}}
    for side in ("tuned", "defaults"):
        conf = summary["confirmation"][side]
        matrix = [conf["evaluations"][n] for n in names]
        report[side] = {"holdout_delayed_prequential": conf["holdout_accuracy"],
                        "tune_segment_delayed_prequential": conf["tune_accuracy"],
                        "probe_forgetting": conf["forgetting"], "replay_seconds": conf["seconds"],
                        "final_acc_per_task": dict(zip(names, matrix[-1])), **_matrix_scores(matrix)}
    return report


def write_markdown(results: dict, out: Path) -> None:
    lines = ["# Tuned vs default settings (`python -m bench.tune`)", "",
             f"{results['trials']} trials per stream (Optuna TPE, median pruning, probe forgetting "
             f"<= {results['max_forgetting']}), head mode, bundled MiniLM, seed {results['seed']}, "
             + (f"kept out of the search: {', '.join(results['fixed'])}, " if results.get("fixed") else "")
             + f"{results['machine']}; total {results['total_seconds']:.0f} s.", "",
             "The study sees only the tuning segment (its delayed-prequential accuracy); test sets "
             "are scored only after, on the whole stream.", ""]
    for name, r in results["scenarios"].items():
        t, d = r["tuned"], r["defaults"]
        lines += [f"## {name}: tune on the first {r['tune_events']} of {r['events']} events", "",
                  "| | final test acc (avg over tasks) | per task | held-out delayed-prequential | "
                  "tune-segment objective | probe forgetting (whole stream) |", "|---|---|---|---|---|---|"]
        for side, v, obj in (("defaults", d, r["tune_objective"]["defaults"]),
                             ("**tuned**", t, r["tune_objective"]["tuned"])):
            per = ", ".join(f"{k} {a:.3f}" for k, a in v["final_acc_per_task"].items()) \
                if len(v["final_acc_per_task"]) <= 2 else \
                f"forgetting {v.get('avg_forgetting', 0):.3f}"
            lines.append(f"| {side} | {v['final_avg_acc']:.3f} | {per} | "
                         f"{v['holdout_delayed_prequential']:.3f} | "
                         f"{obj if obj is None else format(obj, '.3f')} | {v['probe_forgetting']:.3f} |")
        lines += ["", f"Trials: {r['trials']}; search took {r['tuning_seconds']:.0f} s. Winner (trial "
                  f"{r['best_trial']}, [{name}/best.env]({name}/best.env)):", "", "```",
                  *[f"{k}={v}" for k, v in sorted(r["best_params"].items())], "```", "",
                  f"![history]({name}/history.png)", f"![importances]({name}/importances.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamlearner bench tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/tune")
    p.add_argument("--work", default="var/bench-tune", help="study and MLflow stores, features")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--scenarios", default="banking77,domain")
    p.add_argument("--domain-feedback", type=int, default=3000, help="feedback events (domain)")
    p.add_argument("--domain-fraction", type=float, default=0.6)
    p.add_argument("--max-forgetting", type=float, default=None,
                   help="default: GUARD_MARGIN (0.10), what the stability guard tolerates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed", action="append", default=[], metavar="SETTING=VALUE",
                   help="keep a setting out of the search (e.g. MEMORY_CAPACITY=5000)")
    p.add_argument("--model", default=None, help="encoder (default: the bundled MiniLM)")
    args = p.parse_args(argv)

    from streamlearner.settings import Settings
    from tuning.replay import encode_features

    started = time.perf_counter()
    # The worker's defaults, plus what the benchmark protocol fixes: every example once (no
    # repeated-text dedup: bench continual's protocol), CPU.
    base_env = {"LEARNER_DEVICE": "cpu", "STREAM_DEDUP_TEXT_WINDOW": "0"}
    if args.model:
        base_env["LEARNER_MODEL"] = args.model
    if args.max_forgetting is None:
        args.max_forgetting = Settings.from_env(base_env).guard.margin
    built = {}
    for name in args.scenarios.split(","):
        if name == "banking77":
            _, tasks = banking77(args.seed)
            built[name] = (tasks, sum(len(t.train) for t in tasks[:3]))
        elif name == "domain":
            _, tasks = domain(args.seed, args.domain_feedback)
            n = sum(len(t.train) for t in tasks)
            built[name] = (tasks, int(args.domain_fraction * n))
        else:
            print(f"bench tune: unknown scenario {name!r}", file=sys.stderr)
            return 2
    texts = [x for tasks, _ in built.values() for t in tasks for x, _ in t.train + t.test]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    features = encode_features(Settings.from_env(base_env), texts,
                               str(Path(args.work) / "features.safetensors"))
    encode_seconds = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"trials": args.trials, "seed": args.seed, "max_forgetting": args.max_forgetting,
               "fixed": args.fixed,
               "machine": f"{os.cpu_count()} CPU cores (shared), nice 10",
               "encode_seconds": round(encode_seconds, 1), "scenarios": {}}
    for name, (tasks, cut) in built.items():
        print(f"bench tune: {name}: {args.trials} trials on the first {cut} events", file=sys.stderr)
        results["scenarios"][name] = run_scenario(name, tasks, cut, base_env, args, features)
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
