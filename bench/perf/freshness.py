"""Freshness benchmark: publish → applied update, p50/p95/p99, at ~80% of measured capacity.

A real worker (``streamlearner.roles.build_worker``, default
settings: head mode, ER-ACE, drift detection on, micro-batches of 32 within 1 s) runs on the
embedded broker in its own process. Freshness is the pipeline's own measure — the
``streamlearner_learner_freshness_seconds`` observation of each trained event, from its
Kafka record timestamp (set when ``streamlearner publish`` sent it) to the moment its update
was applied — recorded value by value (the histogram's buckets are too coarse for a p99).

1. **Capacity**: ``--backlog`` labeled BANKING77 events are published before the worker
   starts; it drains them at full speed. Capacity = trained events/s over the backlog after
   its first ``--warm-events`` (the drift tests only start once their windows are full).
2. **Load**: then ``--seconds`` of events at ``--load`` (0.8) × capacity, paced by the
   publish CLI's rate limiter; freshness percentiles over those events.

    python -m bench.perf.freshness --backlog 2000 --seconds 60
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
import uuid
from pathlib import Path

from bench.perf.common import banking77, machine, summary


# ---------------------------------------------------------------------- worker (child side)

class _RecordingHistogram:
    """Forwards to the real histogram and appends ``<now> <value>`` lines to ``sink``."""

    def __init__(self, histogram, sink):
        self._histogram, self._sink = histogram, sink

    def labels(self, **labels):
        child, sink = self._histogram.labels(**labels), self._sink

        class Child:
            def observe(self, value: float) -> None:
                sink.write(f"{time.time():.6f} {value:.6f}\n")
                child.observe(value)

        return Child()


def serve_worker(sink_path: str) -> int:
    """The all-in-one worker role with the freshness observations recorded."""
    import faust

    from streamlearner.roles import build_worker
    from streamlearner.settings import Settings

    settings = Settings.from_env()
    os.makedirs(settings.checkpoint.dir, exist_ok=True)
    role = build_worker(settings)
    sink = open(sink_path, "a", buffering=1)
    role.metrics.freshness = _RecordingHistogram(role.metrics.freshness, sink)
    worker = faust.Worker(role.app, loglevel="warning", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        role.close()
        sink.close()
    return 0


# ---------------------------------------------------------------------- parent side

def _read(sink: Path) -> list[tuple[float, float]]:
    if not sink.exists():
        return []
    out = []
    for line in sink.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((float(parts[0]), float(parts[1])))
    return out


def _wait_for(sink: Path, n: int, timeout: float, proc: subprocess.Popen,
              idle: float = 30.0) -> list[tuple[float, float]]:
    """Rows once ``n`` events are trained, or once none was for ``idle`` seconds (an event
    the pipeline legitimately does not train, e.g. a repeated text, must not hang the run)."""
    deadline = time.monotonic() + timeout
    count, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = _read(sink)
        if len(rows) >= n:
            return rows
        if len(rows) != count:
            count, changed = len(rows), time.monotonic()
        elif rows and time.monotonic() - changed > idle:
            return rows
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout}s with {len(_read(sink))} of {n} events trained")


def _payloads(texts, labels, start: int, n: int) -> list[bytes]:
    """Events ``start..start+n``; a text that comes round again gets a suffix, so that the
    pipeline's repeated-text rule (predicted, not trained) does not hide it from the timing."""
    import orjson

    return [orjson.dumps({"id": f"fresh-{i}",
                          "text": texts[i % len(texts)] + (f" ({i // len(texts)})" if i >= len(texts) else ""),
                          "label": labels[i % len(labels)]}) for i in range(start, start + n)]


def run(args: argparse.Namespace) -> dict:
    from tools.broker import EmbeddedBroker, free_port
    from tools.publish import publish
    from streams.topics import create_topics

    texts, labels = banking77(seed=args.seed)
    unique = dict(zip(texts, labels))            # BANKING77 repeats a few texts
    texts, labels = list(unique), list(unique.values())
    work = Path(tempfile.mkdtemp(prefix="perf-freshness-"))
    sink = work / "freshness.txt"
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=work / "tansu.log").start()
        bootstrap = broker.bootstrap
    uid = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP": bootstrap, "KAFKA_APP_ID": f"perf-fresh-{uid}",
        "KAFKA_FEEDBACK_TOPIC": f"perf-feedback-{uid}", "KAFKA_MARKET_TOPIC": f"perf-market-{uid}",
        "KAFKA_PREDICTIONS_TOPIC": f"perf-predictions-{uid}",
        "KAFKA_DEAD_LETTER_TOPIC": f"perf-dead-letters-{uid}",
        "KAFKA_DRIFT_TOPIC": f"perf-drift-{uid}", "KAFKA_EXPLANATIONS_TOPIC": f"perf-explanations-{uid}",
        "KAFKA_MODEL_EVENTS_TOPIC": f"perf-model-events-{uid}",
        "KAFKA_SAMPLES_TOPIC": f"perf-samples-{uid}",
        "KAFKA_MODEL_VERSIONS_TOPIC": f"perf-model-versions-{uid}",
        "MODELS_STORE": str(work / "models"),
        "METRICS_PORT": str(free_port()), "CHECKPOINT_DIR": str(work / "checkpoints"),
        "METRICS_PROBE_SIZE": "0",  # every labeled event is trained on (and timed)
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    env.update(dict(kv.split("=", 1) for kv in args.setting))
    if args.model:
        env["LEARNER_MODEL"] = args.model
    topics = {env[k]: 1 for k in env if k.startswith("KAFKA_") and k.endswith("_TOPIC")}
    create_topics(bootstrap, topics)
    source = env["KAFKA_FEEDBACK_TOPIC"]
    proc = None
    try:
        publish(bootstrap, source, _payloads(texts, labels, 0, args.backlog), progress=False)
        proc = subprocess.Popen([sys.executable, "-m", "bench.perf.freshness", "--serve-worker", str(sink)],
                                env=env, stdout=open(work / "worker.log", "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        rows = _wait_for(sink, args.backlog, args.timeout, proc)
        backlog_trained = len(rows)
        # Steady state only: the drift tests start once their windows are full (reference +
        # window events), and they cost model-thread time; a capacity measured before would
        # overload the worker at "80%".
        steady = rows[min(args.warm_events, len(rows) // 2):]
        done_times = sorted({round(t, 6) for t, _ in steady})
        first, last = done_times[0], done_times[-1]
        first_batch = sum(1 for t, _ in steady if round(t, 6) == first)
        capacity = (len(steady) - first_batch) / (last - first) if last > first else float("nan")
        # A tiny model drains a tiny backlog in one or two batches: no meaningful capacity,
        # and "80%" of an instant would publish without end. --max-rate bounds the load.
        rate = args.load * capacity
        if not rate == rate or rate > args.max_rate:
            rate = args.max_rate
        n = max(1, int(rate * args.seconds))
        load_start = time.time()
        publish(bootstrap, source, _payloads(texts, labels, args.backlog, n), rate=rate, progress=False)
        publish_seconds = time.time() - load_start
        rows = _wait_for(sink, backlog_trained + n, args.timeout, proc)
        loaded = [v for t, v in rows[backlog_trained:] if t - v >= load_start - 0.5]
        stats = summary(loaded)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if broker is not None:
            broker.stop()
    return {
        "backlog": args.backlog, "capacity_events_per_second": capacity,
        "capacity_measured_after_events": min(args.warm_events, backlog_trained // 2),
        "load_fraction": args.load, "offered_events_per_second": rate,
        "rate_capped": rate == args.max_rate,
        "achieved_publish_events_per_second": n / publish_seconds,
        "load_seconds": args.seconds, "events": n, "timed_events": stats["n"],
        "p50_seconds": stats["p50"], "p95_seconds": stats["p95"], "p99_seconds": stats["p99"],
        "max_seconds": stats["max"], "values": [round(v, 4) for v in loaded],
        "settings": {k: v for k, v in (kv.split("=", 1) for kv in args.setting)},
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backlog", type=int, default=2000, help="events drained at full speed first")
    p.add_argument("--warm-events", type=int, default=800,
                   help="backlog events before the capacity clock starts (drift windows filling)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the paced phase")
    p.add_argument("--load", type=float, default=0.8, help="paced rate as a fraction of capacity")
    p.add_argument("--max-rate", type=float, default=5000.0,
                   help="cap on the paced rate, events/s (also used when no capacity could be measured)")
    p.add_argument("--setting", action="append", default=[], metavar="ENV=VALUE",
                   help="worker setting override (repeatable), e.g. STREAM_MAX_WAIT_S=0.5")
    p.add_argument("--model", default=None, help="encoder directory (default: bundled MiniLM)")
    p.add_argument("--bootstrap", default=None, help="default: start the embedded broker")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.freshness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--serve-worker", metavar="SINK", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_worker:
        return serve_worker(args.serve_worker)
    result = run(args)
    print(json.dumps({"freshness": result,
                      "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
