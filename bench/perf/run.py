"""Runs the perf benchmarks one after the other, each in its own process, and writes
``results.json``, ``results.md`` and plots to ``--out`` (default ``bench/results/perf``).

    streamlearner bench perf                 # everything, the committed sizes (~15 min on 2 cores)
    streamlearner bench perf --only learner  # one of ingest, learner, freshness, serving

Every child runs with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy default`` leaves
OpenMP's spinning default): on a shared CPU, spinning OpenMP threads cost more than they
win (bench/NOTES.md). The serving benchmark also runs once without it, for that lever.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.perf.common import ROOT, machine

NAMES = ("ingest", "learner", "freshness", "serving")
TARGETS = (  # (dotted key, op, bound, what)
    ("ingest.ratio_vs_bare_faust", ">=", 0.8, "ingest ≥ 0.8 × do-nothing Faust agent"),
    ("learner.head.ratio_vs_plain_loop", ">=", 0.95, "head learn_many ≥ 0.95 × plain loop"),
    ("learner.lora.ratio_vs_plain_loop", ">=", 0.95, "lora learn_many ≥ 0.95 × plain loop"),
    ("learner.full.ratio_vs_plain_loop", ">=", 0.95, "full learn_many ≥ 0.95 × plain loop"),
    ("learner.head.ratio_cached_vs_recompute_replay", ">=", 5.0,
     "head cached ≥ 5 × recomputing replayed samples"),
    ("freshness.p99_seconds", "<=", 2.0, "freshness p99 ≤ 2 s at 80% capacity"),
    ("serving.single_p99_seconds", "<=", 0.020, "single predict p99 ≤ 20 ms"),
)

SIZES = {
    "full": {
        "ingest": ["--events", "30000", "--rounds", "3"],
        "learner": ["--batches", "12", "--warmup", "2"],
        "freshness": ["--backlog", "2000", "--seconds", "60"],
        "serving": ["--singles", "300", "--batch-texts", "512", "--under-training", "60"],
    },
    "tiny": {
        "ingest": ["--events", "300", "--rounds", "1", "--timeout", "300",
                   "--kinds", "bare_aiokafka,bare_faust,ingest"],
        "learner": ["--batches", "2", "--warmup", "1", "--batch-size", "4"],
        "freshness": ["--backlog", "16", "--warm-events", "4", "--seconds", "2", "--max-rate", "20",
                      "--timeout", "480"],
        "serving": ["--singles", "5", "--batch-texts", "8", "--under-training", "3",
                    "--train-batches", "2"],
    },
}


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _child(name: str, extra: list[str], env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", f"bench.perf.{name}", *extra]
    print(f"[perf] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    result = out[name]
    result["bench_wall_seconds"] = time.perf_counter() - t
    return result


def evaluate(results: dict) -> list[dict]:
    rows = []
    for key, op, bound, what in TARGETS:
        value = get(results, key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met = None
        else:
            met = value >= bound if op == ">=" else value <= bound
        rows.append({"key": key, "target": f"{op} {bound:g}", "value": value, "met": met, "what": what})
    return rows


def _f(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:,.{digits}f}"
    return str(x)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Performance (issue #6)", "",
             f"{m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, {m['device']}, "
             f"load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average_at_start') or [])}; "
             f"OMP_WAIT_POLICY={r['omp_wait_policy']}; sizes `{r['sizes']}`; {r['wall_seconds']:.0f} s in all. "
             "Each ratio is measured side by side in one run (rounds or batches alternate)."
             + "".join(f" Re-run later: {', '.join(x['names'])} at {x['at']} (load average "
                       f"{', '.join(f'{v:.1f}' for v in x['machine'].get('load_average_at_start') or [])})."
                       for x in r.get("reruns", [])), "",
             "## Targets", "", "| target | value | met |", "|---|---|---|"]
    for t in r["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['what']} (`{t['key']}`) | {_f(t['value'])} | {met} |")
    if "ingest" in r:
        i = r["ingest"]
        lines += ["", "## Ingest (embedded broker, one partition, "
                  f"{i['events']} events, take({i['take']}), median of {i['rounds']} rounds)", "",
                  "| consumer | events/s | runs |", "|---|---|---|"]
        for k, v in i["consumers"].items():
            lines.append(f"| {k} | {v:,.0f} | {', '.join(f'{x:,.0f}' for x in i['runs'][k])} |")
        lines += ["", f"ingest / bare Faust = **{_f(i.get('ratio_vs_bare_faust'))}** "
                  f"(per round: {', '.join(_f(x) for x in i.get('ratio_per_round', []))}); "
                  f"the per-event stage alone (no broker): {i['stage_only']['events_per_second']:,.0f} events/s; "
                  f"`streamlearner publish`: {i['publish_cli_events_per_second']:,.0f} events/s."]
    if "learner" in r:
        L = r["learner"]
        c = L["config"]
        lines += ["", f"## Learner (BANKING77, {c['batch_size']} new + {c['batch_size']} replayed per update, "
                  f"strategy {c['strategy']}, {c['batches']} timed updates after {c['warmup']} warm-up, "
                  f"max_length {c['max_length']})", "",
                  "| mode | learn_many samples/s | new samples/s | plain loop samples/s | ratio | peak RSS MiB |",
                  "|---|---|---|---|---|---|"]
        for mode in c["modes"]:
            x = L[mode]
            lines.append(f"| {mode} | {x['samples_per_second']:,.1f} | {x['new_samples_per_second']:,.1f} | "
                         f"{x['plain_loop_samples_per_second']:,.1f} | **{x['ratio_vs_plain_loop']:.2f}** | "
                         f"{x['peak_rss_bytes'] / 2**20:,.0f} |")
        if "head" in L:
            h = L["head"]
            lines += ["", f"Head mode, cached features vs recomputing the encoder for replayed samples: "
                      f"{h['samples_per_second']:,.0f} vs {h['recompute_replay_samples_per_second']:,.0f} "
                      f"samples/s = **{h['ratio_cached_vs_recompute_replay']:.1f}x**. Against a plain loop "
                      f"over precomputed features (the floor of a head update): "
                      f"{h['plain_loop_cached_samples_per_second']:,.0f} samples/s, ratio "
                      f"{h['ratio_vs_plain_loop_cached_features']:.2f} "
                      f"({h['overhead_ms_per_update_vs_cached_loop']:.1f} ms of bookkeeping per update)."]
    if "freshness" in r:
        f = r["freshness"]
        lines += ["", "## Freshness (real worker, default settings)", "",
                  f"Capacity {f['capacity_events_per_second']:.1f} labeled events/s (backlog of {f['backlog']}); "
                  f"load {f['offered_events_per_second']:.1f} events/s ({f['load_fraction']:.0%}) for "
                  f"{f['load_seconds']:.0f} s, {f['timed_events']} events timed.", "",
                  "| p50 | p95 | p99 | max |", "|---|---|---|---|",
                  f"| {f['p50_seconds']:.2f} s | {f['p95_seconds']:.2f} s | {f['p99_seconds']:.2f} s | "
                  f"{f['max_seconds']:.2f} s |"]
    if "serving" in r:
        s = r["serving"]
        copy = (f", serving copy {s['dtype'].removeprefix('torch.')}"
                f"{', traced' if s.get('trace') else ''}" if "dtype" in s else "")
        lines += ["", f"## Serving ({s['mode']} mode, {s['labels']} labels{copy}, unseen BANKING77 test texts)", "",
                  "| measure | n | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|"]
        rows = [("single predict_many", s["single"]), ("single predict_proba (/predict)", s["single_proba"])]
        if "single_under_training" in s:
            rows.append(("single, via the model thread while it trains", s["single_under_training"]))
        if "serving_omp_default" in r:
            rows.append(("single predict_many, OMP_WAIT_POLICY default", r["serving_omp_default"]["single"]))
        for name, x in rows:
            lines.append(f"| {name} | {x['n']} | {1000 * x['p50']:.1f} | {1000 * x['p95']:.1f} | "
                         f"{1000 * x['p99']:.1f} |")
        lines += ["", "Batch throughput: " + ", ".join(
            f"{v['texts_per_second']:,.0f} texts/s in batches of {k}" for k, v in s["batch"].items()) + "."]
    return "\n".join(lines) + "\n"


def plots(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "learner" in r:
        L = r["learner"]
        modes = L["config"]["modes"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        xs = range(len(modes))
        ax.bar([x - 0.2 for x in xs], [L[m]["samples_per_second"] for m in modes], 0.4, label="learn_many")
        ax.bar([x + 0.2 for x in xs], [L[m]["plain_loop_samples_per_second"] for m in modes], 0.4,
               label="plain PyTorch loop")
        ax.set_xticks(list(xs), modes)
        ax.set_yscale("log")
        ax.set_ylabel("samples/s (log)")
        ax.set_title("Learner throughput, same batches")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "learner.png", dpi=120)
        plt.close(fig)
    if "freshness" in r and r["freshness"].get("values"):
        vals = sorted(r["freshness"]["values"])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))])
        ax.axvline(2.0, color="red", linestyle="--", label="target p99 ≤ 2 s")
        ax.axhline(0.99, color="grey", linestyle=":")
        ax.set_xlabel("publish → applied update (s)")
        ax.set_ylabel("fraction of events")
        ax.set_title(f"Freshness at {r['freshness']['offered_events_per_second']:.0f} events/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "freshness.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamlearner bench perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(NAMES), help="comma-separated subset of " + ", ".join(NAMES))
    p.add_argument("--sizes", choices=sorted(SIZES), default="full")
    p.add_argument("--model", default=None, help="encoder directory for learner/serving/freshness")
    p.add_argument("--omp-wait-policy", default="PASSIVE", help="PASSIVE, ACTIVE or default (unset)")
    p.add_argument("--no-omp-comparison", action="store_true",
                   help="skip the serving run without OMP_WAIT_POLICY")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "perf"))
    p.add_argument("--merge", action="store_true",
                   help="keep the other benchmarks' results from an existing results.json")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(NAMES)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    else:
        env.pop("OMP_WAIT_POLICY", None)
    started = time.perf_counter()
    results: dict = {"machine": machine(), "omp_wait_policy": args.omp_wait_policy, "sizes": args.sizes}
    previous = Path(args.out) / "results.json"
    if args.merge and previous.exists():   # re-run some benchmarks, keep the others' results
        kept = json.loads(previous.read_text())
        results = {**kept, **{k: v for k, v in results.items() if k != "machine"},
                   "machine": kept.get("machine", results["machine"])}
        results.setdefault("reruns", []).append({"names": names, "machine": machine(),
                                                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        extra = list(SIZES[args.sizes][name])
        if args.model and name != "ingest":
            extra += ["--model", args.model]
        try:
            results[name] = _child(name, extra, env, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"[perf] {name} failed: {exc}", file=sys.stderr, flush=True)
            results.setdefault("failed", {})[name] = str(exc)[-2000:]
            failed.append(name)
        (out / "partial.json").write_text(json.dumps(results, indent=2) + "\n")
    if "serving" in names and not args.no_omp_comparison and args.omp_wait_policy != "default":
        plain = {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"}
        extra = list(SIZES[args.sizes]["serving"]) + ["--under-training", "0"]
        if args.model:
            extra += ["--model", args.model]
        try:
            results["serving_omp_default"] = _child("serving", extra, plain, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            results.setdefault("failed", {})["serving_omp_default"] = str(exc)[-2000:]
    results["wall_seconds"] = results.get("wall_seconds", 0.0) * bool(args.merge) + time.perf_counter() - started
    results["targets"] = evaluate(results)
    (out / "partial.json").unlink(missing_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    plots(results, out)
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
