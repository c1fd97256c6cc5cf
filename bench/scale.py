"""Scale-out benchmarks (issue #12): serving replicas and one trainer, real processes, one run.

Every part runs the product's role commands (``streamlearner serve`` / ``train`` / ``worker``)
as separate processes on the embedded broker, with the bundled MiniLM, each process on one
torch thread (``OMP_NUM_THREADS=1``) unless said otherwise:

* ``predict``: ``POST /predict`` latency of one unseen text (one request every 50 ms) on a
  serving replica while the trainer trains at full speed on a backlog of samples — beside
  the same request on the all-in-one worker while it trains a backlog (its serving thread),
  and beside the design before the split (prediction queued on the model thread, in process:
  ``bench.perf.serving``'s ``single_under_training_shared``). Target: replica p99 ≤ 20 ms.
* ``staleness``: from the same run, the replica's ``streamlearner_serve_model_staleness_seconds``
  (trainer publish → replica serving) at the default cadence (``MODELS_PUBLISH_EVERY_S=1``),
  head mode. Target: p99 ≤ 2 s.
* ``scale``: events/s of 1 vs 2 replicas (one consumer group, a 6-partition topic) over the
  same stream, a trained version served. Target: 2 replicas ≥ 1.7× one.
* ``worker``: the all-in-one worker's end-to-end events/s over a labeled backlog (default
  settings: head mode, drift on) beside the raw batch-inference texts/s of the same encoder at
  the same batch size (32) and threads, measured in the same run. Target: ≥ 0.8×.

Writes ``results.json``, ``results.md`` and ``scale.png`` to ``--out``.

    python -m bench.scale --out bench/results/scale
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from bench.perf.common import ROOT, banking77, machine, summary

TASK = "feedback"


# -- processes --------------------------------------------------------------------------------

class Role:
    """One ``streamlearner <role>`` process with its own port and checkpoint folder."""

    def __init__(self, role: str, env: dict, work: Path, name: str, threads: int = 1):
        from tools.broker import free_port

        self.role, self.name = role, name
        self.port = free_port()
        self.env = dict(os.environ, **env, METRICS_PORT=str(self.port),
                        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.env.setdefault("CHECKPOINT_DIR", str(work / name))
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> "Role":
        from tools.demo import wait_http

        self.proc = subprocess.Popen([sys.executable, "-m", "streamlearner.cli", self.role],
                                     env=self.env, cwd=ROOT, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout, self.proc)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2):
                    return
            except Exception:
                time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready")

    def metrics(self) -> dict:
        from tools.demo import scrape

        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _env(bootstrap: str, work: Path, uid: str, **extra) -> dict:
    env = {"KAFKA_BOOTSTRAP": bootstrap, "KAFKA_APP_ID": f"bench-{uid}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LOGLEVEL": "warning",
           "MODELS_STORE": str(work / "models"), "METRICS_PROBE_SIZE": "0",
           "KAFKA_SESSION_TIMEOUT_S": "10", "STREAM_DEDUP_TEXT_WINDOW": "0"}
    for name in ("feedback", "market", "predictions", "dead-letters", "drift-alerts",
                 "explanations", "model-events", "samples", "model-versions"):
        key = {"feedback": "FEEDBACK", "market": "MARKET", "dead-letters": "DEAD_LETTER",
               "drift-alerts": "DRIFT", "model-events": "MODEL_EVENTS",
               "model-versions": "MODEL_VERSIONS"}.get(name, name.upper())
        env[f"KAFKA_{key}_TOPIC"] = f"{name}-{uid}"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _topics(bootstrap: str, env: dict, partitions: int) -> None:
    from streams.topics import COMPACTED, create_topics

    topics = {v: 1 for k, v in env.items() if k.startswith("KAFKA_") and k.endswith("_TOPIC")}
    topics[env["KAFKA_FEEDBACK_TOPIC"]] = partitions
    topics[env["KAFKA_MODEL_VERSIONS_TOPIC"]] = (1, COMPACTED)
    create_topics(bootstrap, topics)


def _events(texts, labels, prefix: str, n: int, labeled: bool = True) -> list[bytes]:
    import orjson

    out = []
    for i in range(n):
        e = {"id": f"{prefix}-{i}", "text": texts[i % len(texts)] +
             (f" ({i // len(texts)})" if i >= len(texts) else "")}
        if labeled:
            e["label"] = labels[i % len(labels)]
        out.append(orjson.dumps(e))
    return out


def _samples(texts, labels, prefix: str, n: int, source: str) -> list[bytes]:
    """Samples as a replica publishes them (the trainer's backlog)."""
    from streams.records import Sample, SampleRecord

    now = time.time()
    return [SampleRecord.of(Sample(id=f"{prefix}-{i}", task=TASK,
                                   text=texts[i % len(texts)] + f" #{i}",
                                   label=labels[i % len(labels)], ts=now, topic=source,
                                   partition=0, offset=i, timestamp=now, predicted=None,
                                   confidence=0.0, model_version=0),
                            now).dumps(serializer="json") for i in range(n)]


def _unseen(n: int) -> list[str]:
    import csv

    with open(ROOT / "data" / "banking77" / "test.csv", newline="") as f:
        return [r["text"] for r in csv.DictReader(f)][:n]


def _probe(port: int, texts: list[str], every: float = 0.05) -> list[float]:
    out = []
    for text in texts:
        body = json.dumps({"task": TASK, "text": text}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                                     headers={"content-type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
        out.append(time.perf_counter() - t)
        time.sleep(every)
    return out


def _histogram(samples: dict, name: str) -> dict:
    buckets = sorted(((float(dict(lbl)["le"]), v) for (n, lbl), v in samples.items()
                      if n == name + "_bucket"), key=lambda b: b[0])
    total = buckets[-1][1] if buckets else 0.0
    p99 = next((le for le, c in buckets if total and c >= 0.99 * total), float("nan"))
    p50 = next((le for le, c in buckets if total and c >= 0.5 * total), float("nan"))
    return {"count": total, "p50_upper_bound_seconds": p50, "p99_upper_bound_seconds": p99,
            "buckets": {str(le): c for le, c in buckets}}


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far, all its threads (/proc)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> dict:
    """Machine-wide CPU seconds so far by state (/proc/stat: busy, idle, steal)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick,
            "idle": (idle + iowait) / tick, "steal": steal / tick}


def _threads_cpu(pid: int) -> dict:
    """CPU seconds of each thread of a process, by thread name (/proc/<pid>/task)."""
    out: dict = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat.rsplit(")", 1)[1].split()
        out[f"{name}/{task.name}"] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _cpu_of(roles: list, broker_pid: int | None) -> dict:
    return {"replicas": [_cpu_seconds(r.proc.pid) for r in roles],
            "threads": [_threads_cpu(r.proc.pid) for r in roles],
            "broker": _cpu_seconds(broker_pid), "bench": _cpu_seconds(os.getpid()),
            "machine": _machine_cpu()}


def _cpu_used(before: dict, after: dict, seconds: float) -> dict:
    """Cores each process used over a window (CPU seconds / wall seconds)."""
    return {"replicas": [(a - b) / seconds for a, b in zip(after["replicas"], before["replicas"])],
            "threads": [{k: (a[k] - b.get(k, 0.0)) / seconds for k in a
                         if a[k] - b.get(k, 0.0) > 0.02 * seconds}
                        for a, b in zip(after["threads"], before["threads"])],
            "broker": (after["broker"] - before["broker"]) / seconds,
            "bench": (after["bench"] - before["bench"]) / seconds,
            "machine": {k: (after["machine"][k] - before["machine"][k]) / seconds
                        for k in after["machine"]}}


def _count(role: Role, name: str) -> float:
    from tools.demo import metric_sum

    try:
        return metric_sum(role.metrics(), name)
    except Exception:
        return float("nan")


# -- the parts --------------------------------------------------------------------------------

def part_predict(bootstrap: str, work: Path, args) -> dict:
    """Replica /predict while the trainer trains a backlog; the worker likewise; staleness."""
    from tools.publish import publish

    texts, labels = banking77(seed=args.seed)
    unseen = _unseen(2 * args.requests + 20)
    uid = uuid.uuid4().hex[:6]
    env = _env(bootstrap, work, uid)
    _topics(bootstrap, env, 6)
    out: dict = {}
    # A trained version exists before the replica starts (so it predicts real labels).
    publish(bootstrap, env["KAFKA_SAMPLES_TOPIC"],
            _samples(texts, labels, "warm", 200, env["KAFKA_FEEDBACK_TOPIC"]), progress=False)
    trainer = Role("train", env, work, f"trainer-{uid}").start()
    replica = Role("serve", env, work, f"serve-{uid}").start()
    try:
        deadline = time.monotonic() + 120
        while _count(replica, "streamlearner_serve_model_version") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        _probe(replica.port, unseen[:10], every=0.0)                       # warm-up
        before = _count(trainer, "streamlearner_learner_updates_total")
        publish(bootstrap, env["KAFKA_SAMPLES_TOPIC"],
                _samples(texts, labels, "load", args.backlog, env["KAFKA_FEEDBACK_TOPIC"]),
                progress=False)
        started = time.monotonic()
        lat = _probe(replica.port, unseen[10:10 + args.requests])
        seconds = time.monotonic() - started
        updates = _count(trainer, "streamlearner_learner_updates_total") - before
        out["replica_under_training"] = summary(lat)
        out["trainer_updates_per_second_meanwhile"] = updates / seconds
        time.sleep(3)
        out["staleness"] = _histogram(replica.metrics(), "streamlearner_serve_model_staleness_seconds")
        out["staleness"]["swaps"] = _count(replica, "streamlearner_serve_swaps_total")
    finally:
        replica.stop()
        trainer.stop()
    # The all-in-one worker answering while it trains a backlog of labeled events.
    uid = uuid.uuid4().hex[:6]
    env = _env(bootstrap, work, uid)
    _topics(bootstrap, env, 1)
    publish(bootstrap, env["KAFKA_FEEDBACK_TOPIC"], _events(texts, labels, "w0", 100), progress=False)
    worker = Role("worker", env, work, f"worker-{uid}", threads=args.worker_threads).start()
    try:
        deadline = time.monotonic() + 120
        while _count(worker, "streamlearner_learner_updates_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        _probe(worker.port, unseen[:10], every=0.0)
        publish(bootstrap, env["KAFKA_FEEDBACK_TOPIC"], _events(texts, labels, "w1", args.backlog),
                progress=False)
        out["worker_under_training"] = summary(_probe(worker.port, unseen[10:10 + args.requests]))
    finally:
        worker.stop()
    return out


# Serving configurations of the 1-vs-2-replica comparison: the defaults, and the fp32 eager
# encoder the target was set against (a costlier encoder per event).
SCALE_CONFIGS = {"default": {}, "fp32": {"SERVE_PRECISION": "fp32"},
                 "fp32-eager": {"SERVE_PRECISION": "fp32", "SERVE_TRACE": "false"}}


def _scale_run(bootstrap: str, work: Path, args, base: dict, extra: dict, run: str, n: int,
               broker_pid: int | None) -> dict:
    """One run of ``n`` replicas in a fresh consumer group over a fresh 6-partition source
    topic carrying the same stream: events/s over its steady middle, and where the CPU went."""
    from tools.publish import publish

    texts, labels = banking77(seed=args.seed)
    env = dict(base, **extra, KAFKA_FEEDBACK_TOPIC=f"feedback-{run}", KAFKA_APP_ID=f"bench-{run}")
    _topics(bootstrap, env, 6)
    replicas = [Role("serve", env, work, f"scale-{run}-{k}") for k in range(n)]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        time.sleep(2)   # the group settles: every replica owns its partitions
        publish(bootstrap, env["KAFKA_FEEDBACK_TOPIC"],
                _events(texts, labels, f"s{n}", args.scale_events, labeled=False),
                progress=False)
        # The rate is taken over the steady middle of the stream, from 10% to 90% of it
        # served: not the start (first batches, a partition's first fetch) and not the end,
        # where a replica's last partial batch waits STREAM_MAX_WAIT_S for events that never
        # come (the latency policy, not throughput).
        lo, hi = int(0.1 * args.scale_events), int(0.9 * args.scale_events)
        start = end = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = sum(_count(r, "streamlearner_stream_predictions_total") for r in replicas)
            now = time.monotonic()
            if start is None and done >= lo:
                start, start_done, cpu_start = now, done, _cpu_of(replicas, broker_pid)
            if start is not None and done >= hi:
                end, end_done, cpu_end = now, done, _cpu_of(replicas, broker_pid)
                break
            time.sleep(0.25)   # a scrape costs the replica CPU: poll gently
        ok = end is not None and end > start
        out = {"replicas": n, "events": args.scale_events,
               "measured_events": (end_done - start_done) if ok else 0,
               "events_per_second": (end_done - start_done) / (end - start) if ok
               else float("nan"),
               "cores_used": _cpu_used(cpu_start, cpu_end, end - start) if ok else None}
        while time.monotonic() < deadline and sum(
                _count(r, "streamlearner_stream_predictions_total")
                for r in replicas) < args.scale_events:
            time.sleep(0.2)   # every event served before the replicas stop
        out["per_replica"] = [_count(r, "streamlearner_stream_predictions_total")
                              for r in replicas]
        return out
    finally:
        for r in replicas:
            r.stop()


def bracketed(runs: list[dict], key: str, baseline: str, measured: str) -> dict:
    """Ratios of runs measured between two baseline runs (A B A B ... A): each B against the
    mean of the A before and the A after it, so a machine whose speed drifts over minutes
    (this one: +-25% between runs) moves both sides of each ratio alike. Returns the rounds'
    ratios, their median (the headline), and the median run of each kind.

    >>> runs = [{"kind": "a", "v": 100.0}, {"kind": "b", "v": 180.0}, {"kind": "a", "v": 80.0},
    ...         {"kind": "b", "v": 170.0}, {"kind": "a", "v": 100.0}]
    >>> r = bracketed(runs, "v", "a", "b")
    >>> [round(x, 3) for x in r["ratios"]], round(r["ratio"], 3)
    ([2.0, 1.889], 1.944)
    """
    import statistics

    ratios = []
    for k, run in enumerate(runs):
        if run["kind"] != measured:
            continue
        before = next(r for r in reversed(runs[:k]) if r["kind"] == baseline)
        after = next((r for r in runs[k + 1:] if r["kind"] == baseline), before)
        ratios.append(run[key] / ((before[key] + after[key]) / 2))

    def median_run(kind: str) -> dict:
        kinds = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r[key])
        return kinds[(len(kinds) - 1) // 2]

    return {"ratios": ratios, "ratio": statistics.median(ratios),
            "median_" + baseline: median_run(baseline), "median_" + measured: median_run(measured)}


def part_scale(bootstrap: str, work: Path, args, broker_pid: int | None = None) -> dict:
    """Events/s of 1 vs 2 replicas over the same stream, with a trained version served:
    1, 2, 1, 2, ..., 1 replicas (``--scale-rounds`` pairs), each 2 against the 1s around it."""
    from tools.publish import publish

    texts, labels = banking77(seed=args.seed)
    results: dict = {}
    uid = uuid.uuid4().hex[:6]
    base = _env(bootstrap, work, uid)
    _topics(bootstrap, base, 6)
    publish(bootstrap, base["KAFKA_SAMPLES_TOPIC"],
            _samples(texts, labels, "warm", 300, base["KAFKA_FEEDBACK_TOPIC"]), progress=False)
    trainer = Role("train", base, work, f"scale-trainer-{uid}").start()
    try:
        deadline = time.monotonic() + 120
        while _count(trainer, "streamlearner_train_published_version") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        trainer.stop()   # its newest version stays on the topic for the replicas
    for config in args.scale_configs:
        extra = SCALE_CONFIGS[config]
        rounds = args.scale_rounds if config == args.scale_configs[0] else args.other_rounds
        runs = []
        for k, n in enumerate([1, 2] * rounds + [1]):
            run = _scale_run(bootstrap, work, args, base, extra, f"{uid}-{config}-{k}r{n}", n,
                             broker_pid)
            runs.append(dict(run, kind=str(n)))
        b = bracketed(runs, "events_per_second", "1", "2")
        results[config] = {"settings": extra, "1": b["median_1"], "2": b["median_2"],
                           "ratio_2_vs_1": b["ratio"], "ratios": b["ratios"], "runs": runs}
    head = results.get(args.scale_configs[0], {})
    return {**{k: v for k, v in head.items() if k != "settings"}, "config": args.scale_configs[0],
            "by_config": results}


def raw_inference(texts: list[str], *, batch: int, threads: int, model: str | None,
                  precision: str = "fp32", trace: bool = True, seconds: float = 0.0) -> dict:
    """Texts/s of the encoder + head at ``batch`` (the product's snapshot path: the same
    precision and lanes as serving), in a child process with ``threads`` torch threads, over
    whole passes of ``texts`` for at least ``seconds`` (one pass at least)."""
    code = (
        "import json,sys,time,torch\n"
        f"torch.set_num_threads({threads})\n"
        "from learner.model import default_model_path\n"
        "from serving.snapshot import ModelSnapshot, base_classifier\n"
        "texts=json.load(sys.stdin)\n"
        f"base=base_classifier({model!r} or default_model_path(),max_length=64,"
        f"device=torch.device('cpu'),precision={precision!r},trace={trace!r})\n"
        "snap=ModelSnapshot.empty(base,mode='head')\n"
        f"B={batch}\n"
        "for i in range(0,len(texts),B): snap.score('t',texts[i:i+B])\n"   # every shape seen
        "t=time.perf_counter();n=0\n"
        f"while n==0 or time.perf_counter()-t<{seconds!r}:\n"
        " for i in range(0,len(texts),B): snap.score('t',texts[i:i+B])\n"
        " n+=len(texts)\n"
        "print(json.dumps({'texts':n,'seconds':time.perf_counter()-t,"
        "'dtype':str(next(base.encoder.parameters()).dtype)}))\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), text=True,
                         capture_output=True, env=env, cwd=ROOT, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"texts": r["texts"], "batch": batch, "threads": threads, "precision": precision,
            "trace": trace,
            "dtype": r["dtype"], "texts_per_second": r["texts"] / r["seconds"]}


def _worker_rate(bootstrap: str, work: Path, args, precision: str) -> dict:
    """End-to-end events/s of one all-in-one worker over a fresh labeled backlog."""
    from tools.publish import publish

    texts, labels = banking77(seed=args.seed)
    uid = uuid.uuid4().hex[:6]
    env = _env(bootstrap, work, uid, STREAM_BATCH_SIZE=32, SERVE_PRECISION=precision)
    _topics(bootstrap, env, 1)
    # Whole batches only: a last partial batch waits STREAM_MAX_WAIT_S for events that never
    # come, which is the latency policy, not throughput.
    whole = args.worker_events - args.worker_events % 32
    events = _events(texts, labels, f"e2e-{precision}", whole)
    publish(bootstrap, env["KAFKA_FEEDBACK_TOPIC"], events, progress=False)
    worker = Role("worker", env, work, f"e2e-{precision}-{uid}", threads=args.worker_threads)
    rows: list[tuple[float, float]] = []
    try:
        worker.start()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            done = _count(worker, "streamlearner_stream_predictions_total")
            rows.append((time.monotonic(), done))
            if done >= len(events):
                break
            time.sleep(0.5)   # a scrape costs the worker CPU: poll gently
    finally:
        worker.stop()
    # From the first poll past the warm-up to the last poll before the backlog ran out: both
    # ends are counts at poll instants while the worker streams (ending at the first poll
    # after the last event added up to a poll interval of nothing to the window).
    t0, d0 = next((t, d) for t, d in rows if d >= args.worker_warm)
    t1, d1 = [(t, d) for t, d in rows if d < len(events)][-1]
    if t1 <= t0:   # too short a backlog for two polls inside it: up to the end
        t1, d1 = next((t, d) for t, d in rows if d >= len(events))
    return {"events": len(events), "measured_after_events": d0, "measured_events": d1 - d0,
            "events_per_second": (d1 - d0) / (t1 - t0)}


def part_worker(bootstrap: str, work: Path, args) -> dict:
    """The all-in-one worker's end-to-end events/s vs raw batch inference of the same encoder
    at the same precision, batch size and threads, interleaved in the same run: raw, worker,
    raw, worker, ..., raw (``--worker-rounds`` workers), each worker against the raw runs
    around it; the default precision (auto: bf16 on this CPU) first, then fp32."""
    texts, _ = banking77(seed=args.seed)
    unique = list(dict.fromkeys(texts))
    out: dict = {"settings": "defaults (head mode, er + ACE, drift detection on, batches of 32)",
                 "by_precision": {}}
    for precision in args.worker_precisions:
        rounds = args.worker_rounds if precision == args.worker_precisions[0] else args.other_rounds
        runs = []
        for k in range(2 * rounds + 1):
            if k % 2 == 0:
                raw = raw_inference(unique[:args.raw_texts], batch=32, threads=args.worker_threads,
                                    model=None, precision=precision, seconds=args.raw_seconds)
                runs.append(dict(raw, kind="raw", rate=raw["texts_per_second"]))
            else:
                rate = _worker_rate(bootstrap, work, args, precision)
                runs.append(dict(rate, kind="worker", rate=rate["events_per_second"]))
        b = bracketed(runs, "rate", "raw", "worker")
        out["by_precision"][precision] = {
            "worker": b["median_worker"], "raw_batch_inference": b["median_raw"],
            "ratio": b["ratio"], "ratios": b["ratios"], "runs": runs}
    head = out["by_precision"][args.worker_precisions[0]]
    out.update(worker_events_per_second=head["worker"]["events_per_second"],
               raw_batch_inference=head["raw_batch_inference"], ratio=head["ratio"],
               precision=args.worker_precisions[0])
    return out


def part_shared_baseline(args) -> dict:
    """The design before the split, in process (bench.perf.serving)."""
    from bench.perf import serving

    ns = argparse.Namespace(singles=20, batch_texts=64, under_training=args.requests,
                            train_batches=10, mode="head", model=None, device="cpu",
                            seed=args.seed)
    r = serving.run(ns)
    return {"shared_model_thread": r["single_under_training_shared"],
            "own_serving_thread": r["single_under_training"], "idle_single": r["single"]}


# -- report -----------------------------------------------------------------------------------

def _cores(run: dict) -> str:
    """Where the CPU went over the measured window, for a table cell."""
    u = run.get("cores_used")
    if not u:
        return ""
    replicas = " + ".join(f"{c:.2f}" for c in u["replicas"])
    return (f" (cores: replicas {replicas}, broker {u['broker']:.2f}, machine idle "
            f"{u['machine']['idle']:.2f})")


def _rounds(r: dict) -> str:
    """The rounds behind a median ratio, for a table cell."""
    ratios = r.get("ratios") or []
    if len(ratios) < 2:
        return ""
    return f" (median of {len(ratios)} rounds: " + ", ".join(f"{x:.2f}" for x in ratios) + ")"


def report(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    lines = ["# Scale-out benchmarks (issue #12)", "",
             f"Machine: {result['machine']['cores']} cores, {result['machine']['device']}; "
             f"`python -m bench.scale` ({result['seconds']:.0f} s). Every figure beside its "
             "baseline from the same run. Ratios: each measured run (2 replicas, the worker) "
             "between two baseline runs (1 replica, raw inference), against their mean; the "
             "median over the rounds, whose runs are in results.json. Events/s: the median "
             "run of each kind.", "",
             "| benchmark | measured | baseline, same run | target |", "|---|---|---|---|"]
    p = result.get("predict", {})
    b = result.get("baseline", {})
    if p:
        rp = p["replica_under_training"]
        shared = b.get("shared_model_thread", {})
        lines.append(
            f"| `/predict` on a replica while the trainer trains at full speed "
            f"({p['trainer_updates_per_second_meanwhile']:.1f} updates/s) | p50 "
            f"{rp['p50'] * 1e3:.1f} ms, p99 **{rp['p99'] * 1e3:.1f} ms** | prediction queued on "
            f"the model thread (before the split): p99 {shared.get('p99', float('nan')) * 1e3:.0f} ms; "
            f"all-in-one worker (serving thread) p99 "
            f"{p['worker_under_training']['p99'] * 1e3:.1f} ms | p99 ≤ 20 ms |")
        st = p["staleness"]
        lines.append(f"| staleness, trainer publish → replica serving (head mode, default cadence) "
                     f"| p50 ≤ {st['p50_upper_bound_seconds']} s, p99 ≤ "
                     f"**{st['p99_upper_bound_seconds']} s** over {st['count']:.0f} swaps "
                     f"(histogram bucket bounds) | – | p99 ≤ 2 s |")
    s = result.get("scale", {})
    for config, c in s.get("by_config", {}).items():
        if "ratio_2_vs_1" not in c:
            continue
        shown = ", ".join(f"{k}={v}" for k, v in c["settings"].items()) or "defaults"
        lines.append(f"| serving scale, 1 vs 2 replicas (1 torch thread each, 6 partitions; "
                     f"{shown}) | 2 replicas {c['2']['events_per_second']:.0f} events/s"
                     f"{_cores(c['2'])} | 1 replica {c['1']['events_per_second']:.0f} events/s"
                     f"{_cores(c['1'])}: **{c['ratio_2_vs_1']:.2f}x**{_rounds(c)} | ≥ 1.7x |")
    w = result.get("worker", {})
    for precision, r in w.get("by_precision", {}).items():
        raw = r["raw_batch_inference"]
        lines.append(f"| all-in-one worker end to end ({w['settings']}; SERVE_PRECISION="
                     f"{precision}: {raw['dtype'].removeprefix('torch.')}) | "
                     f"{r['worker']['events_per_second']:.0f} events/s | raw batch inference "
                     f"(same encoder and precision, batch 32, {raw['threads']} threads) "
                     f"{raw['texts_per_second']:.0f} texts/s: **{r['ratio']:.2f}x**{_rounds(r)} "
                     f"| ≥ 0.8x |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if p:
        names = ["replica", "worker", "shared thread"]
        p99 = [p["replica_under_training"]["p99"], p["worker_under_training"]["p99"],
               b.get("shared_model_thread", {}).get("p99", float("nan"))]
        axes[0].bar(names, [v * 1e3 for v in p99], color=["tab:green", "tab:blue", "tab:gray"])
        axes[0].axhline(20, ls="--", c="k", lw=1)
        axes[0].set_ylabel("/predict p99 under training (ms)")
    if s.get("by_config"):
        names, values = [], []
        for config, c in s["by_config"].items():
            if "ratio_2_vs_1" in c:
                shown = config.replace("-", "\n")
                names += [f"1\n{shown}", f"2\n{shown}"]
                values += [c["1"]["events_per_second"], c["2"]["events_per_second"]]
        axes[1].bar(names, values, color=["tab:gray", "tab:green"] * (len(names) // 2))
        axes[1].tick_params(axis="x", labelsize=7)
        axes[1].set_xlabel("replicas, serving settings")
        axes[1].set_ylabel("events/s")
        axes[1].set_title("  ".join(f"{k}: {c['ratio_2_vs_1']:.2f}x"
                                    for k, c in s["by_config"].items() if "ratio_2_vs_1" in c))
    if w.get("by_precision"):
        names, values, colors = [], [], []
        for precision, r in w["by_precision"].items():
            names += [f"worker\n{precision}", f"raw\n{precision}"]
            values += [r["worker"]["events_per_second"],
                       r["raw_batch_inference"]["texts_per_second"]]
            colors += ["tab:blue", "tab:gray"]
        axes[2].bar(names, values, color=colors)
        axes[2].set_ylabel("events (texts)/s")
        axes[2].set_title("  ".join(f"{p}: {r['ratio']:.2f}x"
                                    for p, r in w["by_precision"].items()))
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)


def run(args) -> dict:
    from tools.broker import EmbeddedBroker

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = time.monotonic()
    result: dict = {"machine": machine(), "args": {k: v for k, v in vars(args).items()
                                                  if k != "out"}}
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        for part in args.parts:
            t = time.monotonic()
            if part == "predict":
                result["predict"] = part_predict(broker.bootstrap, work, args)
                result["baseline"] = part_shared_baseline(args)
            elif part == "scale":
                result["scale"] = part_scale(broker.bootstrap, work, args, broker.pid)
            elif part == "worker":
                result["worker"] = part_worker(broker.bootstrap, work, args)
            result.setdefault("part_seconds", {})[part] = time.monotonic() - t
    result["seconds"] = time.monotonic() - started
    result["work_dir"] = str(work)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["predict", "scale", "worker"],
                   choices=["predict", "scale", "worker"])
    p.add_argument("--requests", type=int, default=300, help="/predict requests timed")
    p.add_argument("--backlog", type=int, default=6000, help="samples the trainer trains meanwhile")
    p.add_argument("--scale-events", type=int, default=6000)
    p.add_argument("--scale-rounds", type=int, default=5,
                   help="1-vs-2 rounds of the headline serving settings (1, 2, 1, ..., 1)")
    p.add_argument("--worker-rounds", type=int, default=5,
                   help="worker runs of the headline precision, each between two raw runs")
    p.add_argument("--other-rounds", type=int, default=1,
                   help="rounds of the other settings and precisions")
    p.add_argument("--scale-configs", nargs="+", default=list(SCALE_CONFIGS),
                   choices=list(SCALE_CONFIGS), help="serving settings compared (first: headline)")
    p.add_argument("--worker-events", type=int, default=8000)
    p.add_argument("--worker-warm", type=int, default=700,
                   help="events before the worker's clock starts (drift windows filling)")
    p.add_argument("--worker-threads", type=int, default=2)
    p.add_argument("--raw-texts", type=int, default=1024)
    p.add_argument("--raw-seconds", type=float, default=4.0,
                   help="each raw run: whole passes over the texts for at least this long")
    p.add_argument("--worker-precisions", nargs="+", default=["auto", "fp32"],
                   choices=["auto", "fp32", "bf16"],
                   help="SERVE_PRECISION of each worker run (the first is the headline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/scale")
    args = p.parse_args(argv)
    result = run(args)
    report(result, Path(args.out))
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
