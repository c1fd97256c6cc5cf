"""Ingest benchmark: events/s through decode → validate → clean → dedup on the embedded broker,
beside a do-nothing Faust agent and a bare aiokafka consumer reading the same topic.

One topic of ``--events`` BANKING77 feedback events (one in ten carries an e-mail address or
a phone number for the cleaner to mask) is published with the ``streamlearner publish`` code
path (its events/s is reported too). Then each consumer reads the whole topic from the start,
in its own process, with its own consumer group:

* ``bare_aiokafka``: ``AIOKafkaConsumer.getmany`` and a counter (the client's floor);
* ``bare_faust``: a Faust agent on raw bytes, ``stream.take(1000, within=1)``, doing nothing;
* ``bare_faust_events``: the same with ``take_events`` (what the worker's agent uses: it
  needs each event's coordinates for dead letters and acks the batch after the body);
* ``ingest``: the worker's agent (``take_events``, ``RawEvent``) running the product's
  admission — :func:`streams.admit.admit` (decode, validate, clean, dedup by id) and the
  events counter, as :class:`serving.service.Serving` counts it;
* ``pipeline_null_model``: the real :meth:`serving.service.Serving.handle` with a model that
  answers at once and outputs that deliver nowhere (its per-event Python cost: admission,
  prediction records, samples, metrics).

Rounds alternate the order; each consumer's rate is its median over the rounds, counted from
the end of its first batch to its last event (start-up and group join excluded).

    python -m bench.perf.ingest --events 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from bench.perf.common import banking77, machine

KINDS = ("bare_aiokafka", "bare_faust", "bare_faust_events", "ingest", "pipeline_null_model")
TAKE = 1000


def payloads(n: int, seed: int = 0) -> list[bytes]:
    import orjson

    texts, labels = banking77(seed=seed)
    out = []
    for i in range(n):
        text = texts[i % len(texts)]
        if i % 10 == 3:
            text += f" mail me at user{i}@example.com"
        elif i % 10 == 7:
            text += " or call +44 20 7946 0958"
        out.append(orjson.dumps({"id": f"perf-{i}", "ts": "2026-11-30T09:15:00Z", "text": text,
                                 "label": labels[i % len(labels)], "channel": "chat"}))
    return out


# ---------------------------------------------------------------------- consumers (child side)

class Meter:
    """Counts events; the rate runs from the end of the first batch to the n-th event."""

    def __init__(self, n: int, out: str):
        self.n, self.out = n, out
        self.count = 0
        self.first_done: float | None = None
        self.first_count = 0

    def batch_done(self, size: int) -> bool:
        self.count += size
        now = time.perf_counter()
        if self.first_done is None:
            self.first_done, self.first_count = now, self.count
        if self.count < self.n:
            return False
        seconds = now - self.first_done
        with open(self.out, "w") as f:
            json.dump({"events": self.count, "timed_events": self.count - self.first_count,
                       "seconds": seconds,
                       "events_per_second": (self.count - self.first_count) / seconds
                       if seconds > 0 else float("nan")}, f)
        return True


async def _bare_aiokafka(args, meter: Meter) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap,
                                group_id=f"perf-aiokafka-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=True)
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=TAKE)
            size = sum(len(msgs) for msgs in batches.values())
            if size and meter.batch_done(size):
                return
    finally:
        await consumer.stop()


class _NullSnapshot:
    """Answers at once, whatever the texts (the serving half's cost without a model)."""

    model_version = 0
    name = "teacher"

    def score(self, task, texts, features=None):
        import torch

        from serving.snapshot import Scores

        return Scores(labels=["x"], probs=torch.ones(len(texts), 1), features=None,
                      model_version=0)

    def labels(self, task):
        return ["x"]


class _Inline:
    """A model thread that runs the job in place (the null model needs no thread hop)."""

    async def run(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

def _faust_app(args):
    import faust

    return faust.App(f"perf-{args.consume}-{uuid.uuid4().hex[:8]}",
                     broker=f"kafka://{args.bootstrap}", value_serializer="raw",
                     key_serializer="raw", store="memory://", web_enabled=False,
                     consumer_auto_offset_reset="earliest", topic_partitions=1,
                     datadir=tempfile.mkdtemp(prefix="perf-faust-"))


def _run_faust(args, meter: Meter) -> None:
    import faust

    app = _faust_app(args)
    topic = app.topic(args.topic, value_type=bytes, value_serializer="raw", key_serializer="raw")

    def finish():
        sys.stdout.flush()
        os._exit(0)   # the measurement is written; no need to wait for a graceful leave

    if args.consume == "bare_faust":
        @app.agent(topic)
        async def nothing(stream):
            async for values in stream.take(TAKE, within=1.0):
                if meter.batch_done(len(values)):
                    finish()
    elif args.consume == "bare_faust_events":
        @app.agent(topic)
        async def nothing_events(stream):
            async for events in stream.take_events(TAKE, within=1.0):
                if meter.batch_done(len(events)):
                    finish()
    else:
        from monitoring.metrics import Metrics
        from serving.models import ServedModels
        from serving.service import Outputs, Serving
        from streamlearner.settings import Settings
        from streams.admit import admit
        from streams.agents.ingest import raw_events
        from streams.dedup import Deduplicator
        from streams.records import Reason

        settings = Settings.from_env(overrides={"KAFKA_FEEDBACK_TOPIC": args.topic})
        cfg = settings.stream
        metrics = Metrics(topics={args.topic: "feedback"}, tasks=["feedback"],
                          reasons=[r.value for r in Reason])
        task = "feedback"
        dedup = Deduplicator(id_capacity=cfg.dedup_ids, text_window=cfg.dedup_text_window)
        if args.consume == "ingest":
            async def handle(batch):
                admission = admit(batch, task=task, limits=cfg, dedup=dedup,
                                  received_at=time.time())
                # As Serving.handle counts them: once per batch and outcome.
                for raw, reason, _ in admission.rejected:
                    metrics.events.labels(topic=raw.topic, outcome="invalid").inc()
                    metrics.dead_letters.labels(topic=raw.topic, reason=reason.value).inc()
                metrics.events.labels(topic=args.topic, outcome="duplicate").inc(
                    len(admission.duplicates))
                metrics.events.labels(topic=args.topic, outcome="accepted").inc(
                    len(admission.accepted))
        else:
            import asyncio

            async def nowhere(key, record):
                async def delivered():
                    return None
                return delivered()

            serving = Serving(limits=cfg, serve=settings.serve, metrics=metrics,
                              thread=_Inline(), models=ServedModels(_NullSnapshot()),
                              outputs=Outputs(predictions=nowhere, dead_letters=nowhere),
                              dedup=dedup)

            async def handle(batch):
                deliveries: list = []
                await serving.handle(task, batch, deliveries)
                await asyncio.gather(*deliveries)

        @app.agent(topic)
        async def ingest(stream):
            async for events in stream.take_events(TAKE, within=1.0):
                batch = raw_events(events)   # the worker's agent's own conversion
                await handle(batch)
                if meter.batch_done(len(batch)):
                    finish()

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def consume(args) -> int:
    meter = Meter(args.events, args.out)
    if args.consume == "bare_aiokafka":
        import asyncio

        asyncio.run(_bare_aiokafka(args, meter))
    else:
        _run_faust(args, meter)
    return 0


# ---------------------------------------------------------------------- parent side

def _stage_only(events: list[bytes]) -> dict:
    """The product's admission in a tight loop, no broker: its own ceiling (events/s)."""
    from streams.admit import RawEvent, admit
    from streams.config import StreamConfig
    from streams.dedup import Deduplicator

    batch = [RawEvent(raw, "t", 0, i, 0.0) for i, raw in enumerate(events)]
    dedup, limits = Deduplicator(), StreamConfig()
    t = time.perf_counter()
    for i in range(0, len(batch), TAKE):
        admit(batch[i:i + TAKE], task="feedback", limits=limits, dedup=dedup, received_at=0.0)
    seconds = time.perf_counter() - t
    return {"events": len(events), "events_per_second": len(events) / seconds}


def run(args: argparse.Namespace) -> dict:
    from tools.broker import EmbeddedBroker
    from tools.publish import publish
    from streams.topics import create_topics

    events = payloads(args.events, seed=args.seed)
    result: dict = {"events": args.events, "take": TAKE, "rounds": args.rounds,
                    "stage_only": _stage_only(events[: min(len(events), 5000)])}
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=os.path.join(tempfile.gettempdir(), "perf-ingest-tansu.log")).start()
        bootstrap = broker.bootstrap
    try:
        topic = f"perf-ingest-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: 1})
        t = time.perf_counter()
        publish(bootstrap, topic, events, progress=False)
        result["publish_cli_events_per_second"] = len(events) / (time.perf_counter() - t)
        kinds = [k for k in args.kinds.split(",") if k]
        runs: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    out = f.name
                cmd = [sys.executable, "-m", "bench.perf.ingest", "--consume", kind,
                       "--bootstrap", bootstrap, "--topic", topic, "--events", str(args.events),
                       "--out", out]
                try:
                    proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
                except subprocess.TimeoutExpired as exc:
                    raise RuntimeError(f"{kind} consumer did not finish in {args.timeout}s:\n"
                                       f"{(exc.stderr or b'')[-3000:]!r}") from None
                try:
                    with open(out) as f:
                        runs[kind].append(json.load(f)["events_per_second"])
                except (OSError, ValueError, KeyError):
                    raise RuntimeError(f"{kind} consumer failed (rc {proc.returncode}):\n"
                                       f"{proc.stderr[-3000:]}") from None
                finally:
                    os.unlink(out)
        result["runs"] = runs
        result["consumers"] = {k: statistics.median(v) for k, v in runs.items()}
    finally:
        if broker is not None:
            broker.stop()
    c = result["consumers"]
    if "ingest" in c:
        result["events_per_second"] = c["ingest"]
    if "ingest" in c and "bare_faust" in c:
        result["ratio_vs_bare_faust"] = c["ingest"] / c["bare_faust"]
        result["ratio_per_round"] = [i / b for i, b in zip(runs["ingest"], runs["bare_faust"])]
    if "pipeline_null_model" in c and "bare_faust" in c:
        result["pipeline_null_model_ratio_vs_bare_faust"] = c["pipeline_null_model"] / c["bare_faust"]
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--bootstrap", default=None, help="default: start the embedded broker")
    p.add_argument("--timeout", type=float, default=300, help="seconds per consumer run")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--consume", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.consume:
        return consume(args)
    print(json.dumps({"ingest": run(args), "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
