"""Where a role's CPU goes, thread by thread, while it streams a backlog at full speed.

Runs ``streamlearner worker`` (or N ``serve`` replicas over a 6-partition topic, a trained
version served) on the embedded broker with the bundled MiniLM, lets it warm up, and over
the steady middle of the backlog reads ``/proc`` for every thread of every role process:
CPU (cores), CPU per event, voluntary context switches (the thread blocked: waiting for work,
the GIL, a lock), involuntary ones (preempted) and run-queue wait (runnable, no core free),
beside the machine's idle time and the broker's CPU. The product names its threads at the OS
level (``model_0``, ``serving_0``, ...); the event loop is the process's main thread.

This is the instrument behind docs/performance.md's "where the CPU goes": a lever that
frees CPU shows in the per-thread rows even when the machine's speed drifts between runs.

    python -m bench.threads --role worker --out bench/results/threads
    python -m bench.threads --role serve --replicas 2 --out bench/results/threads-serve
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

from bench.perf.common import banking77, machine
from bench.scale import (Role, _count, _cpu_seconds, _env, _events, _machine_cpu, _samples,
                         _topics)

TICK = os.sysconf("SC_CLK_TCK")


def thread_stats(pid: int) -> dict[str, dict]:
    """Per thread of ``pid``: name, CPU seconds, context switches, run-queue wait (/proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text()
            schedstat = (task / "schedstat").read_text().split()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        after = stat.rsplit(")", 1)[1].split()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[task.name] = {
            "name": "event loop" if task.name == str(pid) else name,
            "cpu": (int(after[11]) + int(after[12])) / TICK,
            "voluntary": int(fields["voluntary_ctxt_switches"]),
            "involuntary": int(fields["nonvoluntary_ctxt_switches"]),
            "runqueue": int(schedstat[1]) / 1e9}
    return out


def _window(roles: list[Role], total: int, lo: float, hi: float, broker_pid) -> dict:
    """Poll the roles' prediction counts; snapshot /proc at ``lo`` and ``hi`` of ``total``."""
    start = end = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        done = sum(_count(r, "streamlearner_stream_predictions_total") for r in roles)
        now = time.monotonic()
        snap = None
        if (start is None and done >= lo * total) or (start is not None and done >= hi * total):
            snap = {"t": now, "done": done, "machine": _machine_cpu(),
                    "broker": _cpu_seconds(broker_pid),
                    "threads": [thread_stats(r.proc.pid) for r in roles]}
        if start is None and snap is not None:
            start = snap
        elif snap is not None:
            end = snap
            break
        time.sleep(0.5)
    if end is None:
        raise TimeoutError("the backlog was not served in time")
    seconds = end["t"] - start["t"]
    events = end["done"] - start["done"]
    rows = []
    for k, (a, b) in enumerate(zip(start["threads"], end["threads"])):
        for tid, after in b.items():
            before = a.get(tid)
            if before is None:
                continue
            cpu = after["cpu"] - before["cpu"]
            if cpu < 0.01 * seconds:
                continue
            rows.append({"process": k, "thread": after["name"], "cores": cpu / seconds,
                         "ms_per_event": 1e3 * cpu / events,
                         "voluntary_per_s": (after["voluntary"] - before["voluntary"]) / seconds,
                         "involuntary_per_s": (after["involuntary"] - before["involuntary"])
                         / seconds,
                         "runqueue_cores": (after["runqueue"] - before["runqueue"]) / seconds})
    rows.sort(key=lambda r: (r["process"], -r["cores"]))
    machine_used = {k: (end["machine"][k] - start["machine"][k]) / seconds
                    for k in end["machine"]}
    return {"window_seconds": seconds, "events": events, "events_per_second": events / seconds,
            "threads": rows, "machine": machine_used,
            "broker_cores": (end["broker"] - start["broker"]) / seconds}


def run(args) -> dict:
    import tempfile

    from tools.broker import EmbeddedBroker
    from tools.publish import publish

    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    texts, labels = banking77(seed=args.seed)
    started = time.monotonic()
    extra = dict(a.split("=", 1) for a in args.set)
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        uid = uuid.uuid4().hex[:6]
        events = args.events - args.events % 32   # whole batches: no partial-batch wait
        if args.role == "worker":
            env = _env(broker.bootstrap, work, uid, STREAM_BATCH_SIZE=32, **extra)
            _topics(broker.bootstrap, env, 1)
            publish(broker.bootstrap, env["KAFKA_FEEDBACK_TOPIC"],
                    _events(texts, labels, f"t-{uid}", events), progress=False)
            roles = [Role("worker", env, work, f"worker-{uid}", threads=args.threads)]
        else:
            env = _env(broker.bootstrap, work, uid, **extra)
            _topics(broker.bootstrap, env, 6)
            publish(broker.bootstrap, env["KAFKA_SAMPLES_TOPIC"],
                    _samples(texts, labels, "warm", 300, env["KAFKA_FEEDBACK_TOPIC"]),
                    progress=False)
            trainer = Role("train", env, work, f"trainer-{uid}").start()
            try:
                deadline = time.monotonic() + 120
                while (_count(trainer, "streamlearner_train_published_version") < 1
                       and time.monotonic() < deadline):
                    time.sleep(0.5)
            finally:
                trainer.stop()
            roles = [Role("serve", env, work, f"serve-{uid}-{k}", threads=args.threads)
                     for k in range(args.replicas)]
        try:
            for r in roles:
                r.start()
            if args.role == "serve":
                for r in roles:
                    r.wait_ready()
                time.sleep(2)   # the group settles
                publish(broker.bootstrap, env["KAFKA_FEEDBACK_TOPIC"],
                        _events(texts, labels, f"s-{uid}", events, labeled=False),
                        progress=False)
            window = _window(roles, events, args.lo, args.hi, broker.pid)
        finally:
            for r in roles:
                r.stop()
    return {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "out"},
            "seconds": time.monotonic() - started, **window}


def report(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    a = result["args"]
    what = (f"`streamlearner worker` ({a['threads']} torch threads)" if a["role"] == "worker"
            else f"{a['replicas']} `streamlearner serve` replica(s), {a['threads']} torch "
                 f"thread(s) each")
    shown = " ".join(a["set"]) or "default settings"
    m = result["machine"]
    lines = [f"# Where the CPU goes: {what}", "",
             f"`python -m bench.threads --role {a['role']}` ({shown}; {result['seconds']:.0f} s): "
             f"{result['events']:.0f} events over the steady {a['lo']:.0%}–{a['hi']:.0%} of a "
             f"{a['events']}-event backlog, **{result['events_per_second']:.0f} events/s**; "
             f"machine busy {m['busy']:.2f} and idle {m['idle']:.2f} of its cores, broker "
             f"{result['broker_cores']:.2f}.", "",
             "CPU ms per event: of every event the processes served together.", "",
             "| process | thread | cores | CPU ms per event | blocked /s (voluntary) | "
             "preempted /s | run-queue wait (cores) |", "|---|---|---|---|---|---|---|"]
    for r in result["threads"]:
        lines.append(f"| {r['process']} | {r['thread']} | {r['cores']:.2f} | "
                     f"{r['ms_per_event']:.3f} | {r['voluntary_per_s']:.0f} | "
                     f"{r['involuntary_per_s']:.0f} | {r['runqueue_cores']:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = [f"{r['process']}:{r['thread']}" for r in result["threads"]]
    ax.barh(names, [r["ms_per_event"] for r in result["threads"]], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per event")
    ax.set_title(f"{result['events_per_second']:.0f} events/s, machine idle {m['idle']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "threads.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["worker", "serve"], default="worker")
    p.add_argument("--replicas", type=int, default=1, help="serve: replicas in the group")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: 2 for the worker, 1 per replica)")
    p.add_argument("--events", type=int, default=9000)
    p.add_argument("--lo", type=float, default=0.2, help="window start, share of the backlog")
    p.add_argument("--hi", type=float, default=0.9, help="window end, share of the backlog")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="settings for the role processes, e.g. DRIFT_ENABLED=false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/threads")
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = 2 if args.role == "worker" else 1
    result = run(args)
    report(result, Path(args.out))
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
