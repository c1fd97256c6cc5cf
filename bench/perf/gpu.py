"""GPU benchmark behind ``bench/gpu.sh``: one prepared run for a lent CUDA machine (< 8 min).

Sections (``--sections``; all of them on CUDA):

* **learner** — samples/s of ``learn_many`` per mode (head / lora / full) at sequence lengths
  64 and 128, for the bundled MiniLM and a BERT-base-sized encoder (random weights: the speed
  and memory are the architecture's), with bf16 autocast (the learner's own on CUDA); the
  activation memory per sample (peak allocated during the updates above what was allocated
  before, per sample of an update) and predict texts/s of each cell. Variant cells:
  gradient checkpointing and ``torch.compile`` (``LEARNER_GRADIENT_CHECKPOINTING`` /
  ``LEARNER_COMPILE``) on BERT-base at 128 tokens.
* **ddp** — the same update on 1 GPU and on N (``train --nproc-per-node N``'s
  DistributedLearner, NCCL), the global micro-batch fixed: strong scaling. Needs N > 1 GPUs
  (skipped, with the reason, otherwise).
* **continual** — the continual BANKING77 run (``bench/continual.py``: 7 class-incremental
  tasks, experience replay) in lora mode: final average accuracy, forgetting, samples/s.

Texts are BANKING77 sentences joined until they fill the sequence length, so every batch is
(B, L) with no padding luck. Writes ``results.json`` and ``results.md`` to ``--out-dir``
(default ``bench/results/gpu/`` on CUDA). ``--tiny`` runs every section on the CPU at CI sizes
(a tiny random BERT, 2 gloo ranks); without it a CPU run is the learner grid at reduced sizes.

    bash bench/gpu.sh                      # a CUDA machine: everything, default sizes
    bash bench/gpu.sh --tiny --out-dir /tmp/gpu-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.perf.common import ROOT, banking77, machine

TASK = "feedback"
RESULTS = ROOT / "bench" / "results" / "gpu"
SECTIONS = ("learner", "ddp", "continual")
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# -- encoders ------------------------------------------------------------------------------------

def random_bert(path: Path, *, hidden: int, layers: int, heads: int, intermediate: int) -> str:
    """A randomly initialised BERT of this size with the bundled (bert-base-uncased) tokenizer."""
    from transformers import BertConfig, BertModel

    from learner.model import default_model_path

    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        BertModel(BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=intermediate, max_position_embeddings=512)
                  ).save_pretrained(path)
        for name in _TOKENIZER_FILES:
            shutil.copy(Path(default_model_path()) / name, path / name)
    return str(path)


def encoders(args, scratch: Path) -> dict[str, str]:
    from learner.model import default_model_path

    if args.model:
        return {Path(args.model).name: args.model}
    if args.tiny:
        return {"tiny-bert": random_bert(scratch / "tiny-bert", hidden=32, layers=2, heads=2,
                                         intermediate=64)}
    return {"minilm": default_model_path(),
            "bert-base": random_bert(scratch / "bert-base", hidden=768, layers=12, heads=12,
                                     intermediate=3072)}


# -- the learner grid ----------------------------------------------------------------------------

_TEXTS: dict[tuple, tuple[list[str], list[str]]] = {}


def long_texts(n: int, tokens: int, tokenizer, seed: int) -> tuple[list[str], list[str]]:
    key = (n, tokens, seed)
    if key not in _TEXTS:
        texts, labels = banking77(seed=seed)
        out, i = [], 0
        for _ in range(n):
            parts = []
            while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
                parts.append(texts[i % len(texts)])
                i += 1
            out.append(" ".join(parts))
        _TEXTS[key] = (out, [labels[k % len(labels)] for k in range(n)])
    return _TEXTS[key]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cell(name: str, path: str, mode: str, seq: int, args, *, variant: str = "") -> dict:
    from learner import Learner, LearnerConfig

    learner = Learner(LearnerConfig(model=path, device=args.device, mode=mode, max_length=seq,
                                    gradient_checkpointing=variant == "checkpointing",
                                    compile=variant == "compile"))
    cuda = learner.device.type == "cuda"
    bs = args.batch_size
    n = (args.warmup + args.batches) * bs
    texts, labels = long_texts(n + args.predict_texts, seq, learner.model.tokenizer, args.seed)
    seconds = samples = 0.0
    per_update = []
    for b in range(args.warmup + args.batches):
        bx, by = texts[b * bs:(b + 1) * bs], labels[b * bs:(b + 1) * bs]
        if mode == "head":
            learner.predict_many(TASK, bx)   # the stream predicts first: features cached
        _sync(learner.device)
        if b == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats(learner.device)
            base = torch.cuda.memory_allocated(learner.device)
        t = time.perf_counter()
        stats = learner.learn_many(TASK, bx, by)
        _sync(learner.device)
        if b >= args.warmup:
            seconds += time.perf_counter() - t
            samples += stats.n_new + stats.n_replay
            per_update.append(stats.n_new + stats.n_replay)
    peak = torch.cuda.max_memory_allocated(learner.device) if cuda else None
    unseen = texts[n:]
    learner.features.clear()
    learner.predict_many(TASK, unseen[:bs])    # warm the predict path (and its compile)
    learner.features.clear()
    _sync(learner.device)
    t = time.perf_counter()
    learner.predict_many(TASK, unseen)
    _sync(learner.device)
    predict_s = time.perf_counter() - t
    del learner
    if cuda:
        torch.cuda.empty_cache()
    return {"model": name, "mode": mode, "seq_len": seq, "variant": variant or "-",
            "compiled": variant == "compile", "batch_size": bs,
            "update_samples": max(per_update) if per_update else 0,
            "learn_samples_per_second": samples / seconds if seconds else float("nan"),
            "predict_texts_per_second": len(unseen) / predict_s,
            "cuda_peak_allocated_bytes": peak,
            "activation_bytes_per_sample": ((peak - base) / max(per_update)) if cuda and per_update else None}


class Budget:
    """The run's time budget: what would start after it is skipped (and says so), so that a
    lent machine's slot always ends with results written."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.perf_counter()

    def spent(self) -> bool:
        return time.perf_counter() - self.started > self.seconds


def learner_section(args, models: dict[str, str], cuda: bool, budget: Budget) -> list[dict]:
    rows = []
    for name, path in models.items():
        for seq in (int(s) for s in args.seq_lens.split(",")):
            for mode in args.modes.split(","):
                if budget.spent():
                    rows.append({"model": name, "mode": mode, "seq_len": seq, "variant": "-",
                                 "error": "skipped: time budget spent"})
                    continue
                rows.append(cell(name, path, mode, seq, args))
                print(_row(rows[-1]), flush=True)
    variants = [v for v in args.variants.split(",") if v]
    if variants:
        name = "bert-base" if "bert-base" in models else next(iter(models))
        seq = max(int(s) for s in args.seq_lens.split(","))
        for variant, mode in (("checkpointing", "full"), ("compile", "lora")):
            if variant in variants and budget.spent():
                rows.append({"model": name, "mode": mode, "seq_len": seq, "variant": variant,
                             "error": "skipped: time budget spent"})
            elif variant in variants:
                try:
                    rows.append(cell(name, models[name], mode, seq, args, variant=variant))
                    print(_row(rows[-1]), flush=True)
                except Exception as exc:   # an optimisation failing is a result, not a crash
                    rows.append({"model": name, "mode": mode, "seq_len": seq, "variant": variant,
                                 "error": f"failed: {type(exc).__name__}: {exc}"[:300]})
                    print(f"{variant} cell failed: {rows[-1]['error']}", flush=True)
    return rows


def _row(r: dict) -> str:
    mem = r.get("activation_bytes_per_sample")
    return (f"{r['model']:<10}{r['mode']:<6}{r['seq_len']:>5}{r['variant']:>15}"
            f"{r['learn_samples_per_second']:>17,.1f}{r['predict_texts_per_second']:>17,.1f}"
            f"{'' if mem is None else f'{mem / 2**20:>14,.2f}'}")


# -- 1 vs N ranks --------------------------------------------------------------------------------

def _ddp_rank(rank: int, world: int, port: int, spec: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from learner import LearnerConfig, MemoryConfig
    from learner.distributed import DistributedLearner, Ranks, init

    if spec["device"] == "cpu":
        torch.set_num_threads(1)
    config, group = init(LearnerConfig(model=spec["path"], device=spec["device"], mode=spec["mode"],
                                       max_length=spec["seq"]), Ranks(rank, world, rank))
    learner = DistributedLearner(config, MemoryConfig(), group=group)
    if rank == 0:
        texts, labels, bs = spec["texts"], spec["labels"], spec["batch_size"]
        seconds = samples = 0.0
        for b in range(spec["warmup"] + spec["batches"]):
            _sync(learner.device)
            t = time.perf_counter()
            stats = learner.learn_many(TASK, texts[b * bs:(b + 1) * bs], labels[b * bs:(b + 1) * bs])
            _sync(learner.device)
            if b >= spec["warmup"]:
                seconds += time.perf_counter() - t
                samples += stats.n_new + stats.n_replay
        learner.stop()
        Path(out).write_text(json.dumps({"samples_per_second": samples / seconds}))
    else:
        learner.follow()
    dist.destroy_process_group()


def ddp_section(args, models: dict[str, str], cuda: bool) -> dict:
    import torch.multiprocessing as mp
    from transformers import AutoTokenizer

    from learner.distributed import _free_port

    world = args.nproc or (torch.cuda.device_count() if cuda else 2)
    if world < 2:
        return {"skipped": f"{world} GPU on this machine: 1 vs N needs N > 1"}
    name = "bert-base" if "bert-base" in models else next(iter(models))
    seq = max(int(s) for s in args.seq_lens.split(","))
    rows = []
    tokenizer = AutoTokenizer.from_pretrained(models[name])
    bs = args.ddp_batch_size
    for mode in ("lora", "full") if cuda else ("full",):
        texts, labels = long_texts((args.warmup + args.batches) * bs + bs, seq, tokenizer, args.seed)
        one = cell(name, models[name], mode, seq, argparse.Namespace(**{**vars(args), "batch_size": bs,
                                                                     "predict_texts": bs}))
        spec = {"path": models[name], "device": "cuda" if cuda else "cpu", "mode": mode, "seq": seq,
                "texts": texts, "labels": labels, "batch_size": bs, "warmup": args.warmup,
                "batches": args.batches}
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "rank0.json")
            # CUDA needs fresh processes; on a CPU, forks skip re-importing torch and transformers.
            mp.start_processes(_ddp_rank, args=(world, _free_port(), spec, out), nprocs=world,
                               join=True, start_method="spawn" if cuda else "fork")
            many = json.loads(Path(out).read_text())["samples_per_second"]
        rows.append({"model": name, "mode": mode, "seq_len": seq, "batch_size": bs,
                     "ranks": world, "one_rank_samples_per_second": one["learn_samples_per_second"],
                     "n_ranks_samples_per_second": many,
                     "speedup": many / one["learn_samples_per_second"]})
        print(f"ddp {name} {mode} {seq}: 1 rank {rows[-1]['one_rank_samples_per_second']:,.1f}/s, "
              f"{world} ranks {many:,.1f}/s (x{rows[-1]['speedup']:.2f})", flush=True)
    return {"ranks": world, "backend": "nccl" if cuda else "gloo", "rows": rows}


# -- continual BANKING77 in lora mode --------------------------------------------------------------

def continual_section(args, models: dict[str, str], cuda: bool, scratch: Path) -> dict:
    from bench import continual

    train, test = ROOT / "data" / "banking77" / "train.csv", ROOT / "data" / "banking77" / "test.csv"
    extra = []
    if args.tiny:   # 4 intents, 8 training and 4 test sentences each, 2 tasks
        import csv

        picked: dict[str, list] = {}
        for split, path in (("train", train), ("test", test)):
            rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
            labels = sorted({r["category"] for r in rows})[:4]
            keep = [r for y in labels for r in [r for r in rows if r["category"] == y][:8 if split == "train" else 4]]
            out = scratch / f"{split}.csv"
            with open(out, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=["text", "category"])
                w.writeheader()
                w.writerows({"text": r["text"], "category": r["category"]} for r in keep)
            picked[split] = out
        train, test = picked["train"], picked["test"]
        extra = ["--tasks", "2", "--model", next(iter(models.values()))]
    else:
        extra = ["--tasks", "7"] + (["--model", models["minilm"]] if "minilm" in models else [])
    out = scratch / "continual"
    rc = continual.main(["--train", str(train), "--test", str(test), "--label-column", "category",
                         "--strategy", "er", "--mode", "lora", "--device", args.device,
                         "--out", str(out), *extra])
    if rc:
        return {"error": f"bench continual exited with {rc}"}
    report = json.loads((out / "results.json").read_text())
    run = report["results"]["er"]
    return {"mode": "lora", "strategy": "er", "tasks": len(report["tasks"]),
            "train_samples": run["train_samples"], "final_avg_acc": run["final_avg_acc"],
            "avg_forgetting": run["avg_forgetting"], "bwt": run["bwt"],
            "samples_per_second": run["samples_per_second"], "wall_seconds": run["wall_seconds"],
            "backbone": report["backbone"]}


# -- report --------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [f"# GPU benchmark (`bash bench/gpu.sh{' --tiny' if results['tiny'] else ''}`)", "",
             f"{info['device']}, torch {info['torch']}, bf16 autocast "
             f"{'on' if results['cuda'] else 'off (CPU)'}; {results['wall_seconds']:.0f} s in all. "
             "Activation memory per sample: peak allocated during the timed updates minus what "
             "was allocated before them, divided by the samples of one update (new + replayed)."
             + (" **--tiny: CI sizes on a CPU, a smoke test of the script; its figures measure "
                "nothing.**" if results["tiny"] else ""),
             "", "## Learner", "",
             "| model | mode | seq | variant | learn samples/s | predict texts/s | act. MiB/sample | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results.get("learner", []):
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | {r['seq_len']} | {r['variant']} | "
                         f"{r['error']} | | | |")
            continue
        mem, peak = r["activation_bytes_per_sample"], r["cuda_peak_allocated_bytes"]
        lines.append(f"| {r['model']} | {r['mode']} | {r['seq_len']} | {r['variant']} | "
                     f"{r['learn_samples_per_second']:,.1f} | {r['predict_texts_per_second']:,.1f} | "
                     f"{'-' if mem is None else f'{mem / 2**20:,.2f}'} | "
                     f"{'-' if peak is None else f'{peak / 2**20:,.0f}'} |")
    ddp = results.get("ddp")
    if ddp is not None:
        lines += ["", "## 1 vs N ranks (DDP, fixed global micro-batch)", ""]
        if "skipped" in ddp:
            lines.append(f"Not measured: {ddp['skipped']}.")
        else:
            lines += [f"{ddp['ranks']} ranks, {ddp['backend']}.", "",
                      "| model | mode | seq | batch (new) | 1 rank samples/s | N ranks samples/s | speedup |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['mode']} | {r['seq_len']} | {r['batch_size']} | "
                      f"{r['one_rank_samples_per_second']:,.1f} | {r['n_ranks_samples_per_second']:,.1f} | "
                      f"{r['speedup']:.2f} |" for r in ddp["rows"]]
    c = results.get("continual")
    if c is not None:
        lines += ["", "## Continual BANKING77, lora mode", ""]
        if "error" in c:
            lines.append(f"Not measured: {c['error']}.")
        else:
            lines += [f"{c['tasks']} class-incremental tasks, strategy {c['strategy']}, {c['backbone']}: "
                      f"final average accuracy **{c['final_avg_acc']:.3f}**, forgetting "
                      f"{c['avg_forgetting']:.3f}, BWT {c['bwt']:.3f}; {c['train_samples']} samples at "
                      f"{c['samples_per_second']:,.1f}/s ({c['wall_seconds']:.0f} s)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="every section on the CPU at CI sizes (tiny random BERT, 2 gloo ranks)")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated from {','.join(SECTIONS)} (default: all on CUDA or with "
                        "--tiny, learner otherwise)")
    p.add_argument("--modes", default="head,lora,full")
    p.add_argument("--seq-lens", default=None, help="default 64,128 (16,32 with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="new samples per update")
    p.add_argument("--ddp-batch-size", type=int, default=None, help="new samples per DDP update")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--predict-texts", type=int, default=None)
    p.add_argument("--variants", default=None,
                   help="extra cells: checkpointing,compile (default: both on CUDA, "
                        "checkpointing with --tiny, none otherwise)")
    p.add_argument("--nproc", type=int, default=None, help="ranks of the ddp section (default: GPUs)")
    p.add_argument("--model", default=None, help="one encoder directory instead of MiniLM + BERT-base")
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start nothing new after this many seconds (the rest is recorded as skipped)")
    p.add_argument("--out", default=None, help="also write the results JSON to this file")
    p.add_argument("--out-dir", default=None,
                   help="results.json + results.md here (default: bench/results/gpu on CUDA)")
    args = p.parse_args(argv)
    if args.tiny:
        cuda = False
    args.device = args.device or ("cuda" if cuda else "cpu")
    cuda = args.device.startswith("cuda")
    big = cuda and not args.tiny
    defaults = {"seq_lens": "64,128" if not args.tiny else "16,32",
                "batch_size": 64 if big else 4, "ddp_batch_size": 128 if big else 6,
                "batches": 20 if big else (2 if args.tiny else 1), "warmup": 3 if big else 1,
                "predict_texts": 2048 if big else 8,
                "variants": "checkpointing,compile" if big else ("checkpointing" if args.tiny else "")}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sections = (args.sections or (",".join(SECTIONS) if cuda or args.tiny else "learner")).split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}")
    out_dir = Path(args.out_dir) if args.out_dir else (RESULTS if big else None)

    started = time.perf_counter()
    budget = Budget(args.budget_s)
    results: dict = {"machine": machine(), "cuda": cuda, "tiny": args.tiny,
                     "args": {k: v for k, v in vars(args).items()}}
    print(f"device {results['machine']['device']}, torch {results['machine']['torch']}, "
          f"bf16 autocast {'on' if cuda else 'off (CPU)'}")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        scratch = Path(tmp)
        models = encoders(args, scratch)
        if "learner" in sections:
            print(f"{'model':<10}{'mode':<6}{'seq':>5}{'variant':>15}{'learn samples/s':>17}"
                  f"{'predict texts/s':>17}{'act. MiB/sample':>16}", flush=True)
            results["learner"] = learner_section(args, models, cuda, budget)
            results["gpu"] = [r for r in results["learner"] if "error" not in r]   # the old key
        if "ddp" in sections:
            results["ddp"] = ({"skipped": "time budget spent"} if budget.spent()
                              else ddp_section(args, models, cuda))
        if "continual" in sections:
            results["continual"] = ({"error": "skipped: time budget spent"} if budget.spent()
                                    else continual_section(args, models, cuda, scratch))
            print(f"continual lora: {json.dumps(results['continual'])}", flush=True)
    results["wall_seconds"] = time.perf_counter() - started
    print(f"{results['wall_seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        (out_dir / "results.md").write_text(markdown(results))
        print(f"wrote {out_dir / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
