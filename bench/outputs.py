"""Output records: the producer path (``streams.app.output``) beside Faust's ``Topic.send``.

One process, the embedded broker, one Faust app with the product's producer settings (acks
all, linger ``KAFKA_PRODUCER_LINGER_MS``'s default). Each round sends the same micro-batches
as a serving replica does (per event: a prediction and a sample, keyed by the event id, the
batch's deliveries awaited with ``deliver_all``) once through each path, alternating which
goes first. Both go through the same :class:`~streams.outputs.Output`; only the send differs:

* ``producer``: the product's ``streams.app.output`` (the aiokafka producer under Faust's);
* ``faust``: ``Topic.send`` of the same Faust topics (what the product did before).

Reported: the event loop's CPU per event (process CPU time over the sends and deliveries,
the aiokafka sender included) and the wall time, median over the rounds; the ratio is
faust / producer. Writes ``results.json``, ``results.md`` and ``outputs.png`` to ``--out``.

    python -m bench.outputs --out bench/results/outputs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from bench.perf.common import machine


def _batches(n: int, batch: int) -> list[list[tuple]]:
    from streams.records import Prediction, Sample, SampleRecord

    now = time.time()
    text = "I still have not received my new card, what should I do about it?"
    events = []
    for i in range(n):
        sample = Sample(id=f"ev-{i}", task="feedback", text=text, label=None, ts=now,
                        topic="feedback", partition=i % 6, offset=i, timestamp=now,
                        predicted="card_arrival", confidence=0.93, model_version=7)
        events.append((f"ev-{i}", Prediction(id=f"ev-{i}", task="feedback", label="card_arrival",
                                             confidence=0.93, model_version=7, ts=now),
                       SampleRecord.of(sample, now)))
    return [events[i:i + batch] for i in range(0, n, batch)]


async def _round(bootstrap: str, topics: tuple[str, str], batches, path: str) -> dict:
    import faust

    from streams.app import output
    from streams.config import KafkaConfig
    from streams.outputs import DeliveryPolicy, Output, deliver_all
    from streams.records import Prediction, SampleRecord

    linger = KafkaConfig().producer_linger_ms / 1000.0
    app = faust.App(f"bench-outputs-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}",
                    value_serializer="raw", producer_acks=-1, producer_linger=linger)
    policy = DeliveryPolicy()
    outs = []
    for name, value_type in zip(topics, (Prediction, SampleRecord)):
        if path == "producer":
            outs.append(output(app, name, metrics=None, policy=policy, value_type=value_type))
        else:
            topic = app.topic(name, value_type=value_type, key_type=str, key_serializer="raw",
                              value_serializer="json")
            outs.append(Output(name, lambda k, r, t=topic: t.send(key=k, value=r),
                               policy=policy))
    predictions, samples = outs
    await app.maybe_start_producer()
    try:
        await deliver_all([await predictions.publish("warm", batches[0][0][1])])
        events = sum(len(b) for b in batches)
        cpu, wall = time.process_time(), time.perf_counter()
        for batch in batches:
            deliveries = []
            for key, prediction, sample in batch:
                deliveries.append(await predictions.publish(key, prediction))
                deliveries.append(await samples.publish(key, sample))
            await deliver_all(deliveries)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await app.producer.stop()
    return {"path": path, "events": events, "cpu_us_per_event": 1e6 * cpu / events,
            "wall_us_per_event": 1e6 * wall / events}


def run(args) -> dict:
    from streams.topics import create_topics
    from tools.broker import EmbeddedBroker

    batches = _batches(args.events, args.batch)
    started = time.monotonic()
    rounds: list[dict] = []
    with EmbeddedBroker() as broker:
        uid = uuid.uuid4().hex[:6]
        topics = (f"predictions-{uid}", f"samples-{uid}")
        create_topics(broker.bootstrap, {t: args.partitions for t in topics})
        for k in range(args.rounds):
            order = ("producer", "faust") if k % 2 == 0 else ("faust", "producer")
            for path in order:
                rounds.append(dict(asyncio.run(_round(broker.bootstrap, topics, batches, path)),
                                   round=k))
    out: dict = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "out"},
                 "rounds": rounds, "seconds": time.monotonic() - started}
    for path in ("producer", "faust"):
        mine = [r for r in rounds if r["path"] == path]
        out[path] = {key: statistics.median(r[key] for r in mine)
                     for key in ("cpu_us_per_event", "wall_us_per_event")}
    out["cpu_ratio_faust_vs_producer"] = (out["faust"]["cpu_us_per_event"]
                                          / out["producer"]["cpu_us_per_event"])
    return out


def report(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    a = result["args"]
    p, f = result["producer"], result["faust"]
    lines = ["# Output records: the producer path beside Faust's Topic.send", "",
             f"`python -m bench.outputs` ({result['seconds']:.0f} s): {a['events']} events in "
             f"micro-batches of {a['batch']}, a prediction and a sample each, {a['partitions']} "
             f"partitions per topic, embedded broker, {a['rounds']} rounds alternating which path "
             "goes first; medians over the rounds.", "",
             "| path | CPU per event (2 records) | wall per event |", "|---|---|---|",
             f"| `streams.app.output` (aiokafka producer under Faust's) | "
             f"**{p['cpu_us_per_event']:.1f} µs** | {p['wall_us_per_event']:.1f} µs |",
             f"| Faust `Topic.send` (baseline) | {f['cpu_us_per_event']:.1f} µs | "
             f"{f['wall_us_per_event']:.1f} µs |", "",
             f"Faust's path costs **{result['cpu_ratio_faust_vs_producer']:.2f}x** the CPU of the "
             "producer path. Wall time is mostly the broker's round trip and the producer's "
             "linger, the same for both."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(["producer path", "Faust Topic.send"], [p["cpu_us_per_event"], f["cpu_us_per_event"]],
           color=["tab:green", "tab:gray"])
    ax.set_ylabel("event-loop CPU per event (µs, 2 records)")
    ax.set_title(f"{result['cpu_ratio_faust_vs_producer']:.2f}x")
    fig.tight_layout()
    fig.savefig(out / "outputs.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.outputs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=6400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default="bench/results/outputs")
    args = p.parse_args(argv)
    result = run(args)
    report(result, Path(args.out))
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
