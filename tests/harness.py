"""The all-in-one worker's batch path without Faust: the real serving half, the real trainer
and their :class:`~streamlearner.flows.WorkerFlow`, with outputs kept in memory.

``make_worker(tmp_path, tiny_model_dir, **env)`` -> :class:`Harness`: ``handle(task, batch,
ack)`` as an agent calls it, and the parts tests look at (learner, checkpoints, journal,
guard, probes, outputs by topic).
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.admit import RawEvent
from streams.outputs import DeliveryPolicy, Output
from streams.records import Reason

TOPICS = ("predictions", "dead-letters", "explanations", "drift-alerts", "model-events",
          "model-versions", "samples")


class Broker:
    """Output topics in memory; ``refuse[topic]`` = an error every send to it fails with."""

    def __init__(self):
        self.topics: dict[str, list] = {}
        self.refuse: dict[str, Exception] = {}

    def sender(self, topic):
        async def send(key, record):
            error = self.refuse.get(topic)
            future = asyncio.get_running_loop().create_future()
            if error is not None:
                future.set_exception(error)
            else:
                self.topics.setdefault(topic, []).append((key, record))
                future.set_result(None)
            return future
        return send

    def records(self, topic):
        return list(self.topics.get(topic, []))

    def keys(self, topic):
        return [k for k, _ in self.topics.get(topic, [])]


class Harness:
    def __init__(self, flow, settings, registry, threads, broker):
        self.flow = flow
        self.settings = settings
        self.registry = registry
        self.threads = threads
        self.broker = broker
        self.trainer = flow.trainer
        self.serving = flow.serving
        self.learner = flow.trainer.learner
        self.model = flow.trainer.thread
        self.checkpoints = flow.trainer.durability.checkpoints
        self.journal = flow.trainer.durability.journal
        self.stopped: list = []
        self.latch.on_failure = self.stopped.append

    # what tests call
    async def handle(self, task, batch, ack=None):
        """One batch, served and learned (the worker pipelines learning behind serving:
        ``handle_pipelined`` leaves it running)."""
        report = await self.flow.handle(task, batch, ack)
        return await report.learning if report.learning is not None else report

    def handle_pipelined(self, task, batch, ack=None):
        return self.flow.handle(task, batch, ack)

    def handle_labels(self, batch, ack=None):
        """One batch of the labels topic (streamlearner.flows.LabelFlow)."""
        from streamlearner.flows import LabelFlow

        if getattr(self, "_labels_flow", None) is None:
            self._labels_flow = LabelFlow(self.trainer)
        return self._labels_flow.handle("labels", batch, ack)

    def drain(self):
        return self.flow.drain()

    def flush_if_idle(self):
        return self.trainer.flush_if_idle()

    def checkpoint_now(self):
        return self.trainer.durability.checkpoint_now()

    def rollback_to(self, version, reason="manual"):
        return self.trainer.rollback_to(version, reason)

    def versions(self):
        return self.trainer.versions()

    def sample(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)

    @property
    def latch(self):
        return self.trainer.latch

    @property
    def failed(self):
        return self.latch.failed

    @property
    def failure(self):
        return self.latch.failure

    @property
    def guard(self):
        return self.trainer.guard

    @property
    def probes(self):
        return self.trainer.probes

    @property
    def dedup(self):
        return self.trainer.dedup

    @property
    def drift(self):
        return self.trainer.drift

    def predictions(self):
        return self.broker.records("predictions")

    def dead_letters(self):
        return self.broker.records("dead-letters")

    def close(self):
        for t in self.threads:
            t.close()
        if self.journal is not None:
            self.journal.close()


def make_worker(tmp_path, model_dir: str, *, broker: Broker | None = None,
                retries: int = 2, **env) -> Harness:
    """A worker batch path over the tiny model in ``model_dir`` (mode full unless ``env``
    says otherwise), checkpoints under ``tmp_path/ck``."""
    from serving.service import Outputs
    from streamlearner.roles import assemble_worker
    from streamlearner.settings import Settings
    from streams.acks import FailStop
    from streams.handoff import ModelThread

    base = {"CHECKPOINT_DIR": str(tmp_path / "ck"), "MODELS_STORE": str(tmp_path / "models"),
            "LEARNER_MODEL": model_dir, "LEARNER_MODE": "full", "LEARNER_DEVICE": "cpu",
            "STREAM_DEDUP_TEXT_WINDOW": "0", "METRICS_PROBE_SIZE": "0",
            "MEMORY_CAPACITY": "50", "MODELS_PUBLISH_EVERY_UPDATES": "1"}
    settings = Settings.from_env({**base, **{k: str(v) for k, v in env.items()}})
    broker = broker if broker is not None else Broker()
    reg = CollectorRegistry()
    metrics = Metrics(registry=reg, topics=settings.kafka.source_topics(),
                      tasks=["feedback", "market"], reasons=[r.value for r in Reason],
                      outputs=list(TOPICS))
    policy = DeliveryPolicy(retries=retries, backoff_s=0.0, backoff_max_s=0.0)

    def out(topic):
        return Output(topic, broker.sender(topic), metrics=metrics, policy=policy)

    from streamlearner.roles import serving_lanes

    lanes, per_lane = serving_lanes(settings) if "SERVE_LANES" in env else (1, None)
    model_thread = ModelThread()
    serving_thread = ModelThread(name="test-serving", workers=lanes, torch_threads=per_lane)
    flow = assemble_worker(
        settings, metrics=metrics, latch=FailStop(metrics), model_thread=model_thread,
        serving_thread=serving_thread,
        serving_outputs=Outputs(predictions=out("predictions").publish,
                                dead_letters=out("dead-letters").publish,
                                explanations=out("explanations").publish),
        trainer_outputs={"drift_alerts": out("drift-alerts").publish,
                         "model_events": out("model-events").publish,
                         "versions": out("model-versions").send_and_wait,
                         "dead_letters": out("dead-letters").publish})
    return Harness(flow, settings, reg, [model_thread, serving_thread], broker)


def raw(offset, payload, topic="customer-feedback", partition=0):
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return RawEvent(value=payload, topic=topic, partition=partition, offset=offset,
                    timestamp=0.0)


def label_records(pairs, offset=0, topic="labels", **fields):
    """Labels-topic records: ``pairs`` of (id, label), extra JSON ``fields`` on each."""
    return [raw(offset + k, {"id": i, "label": y, **fields}, topic)
            for k, (i, y) in enumerate(pairs)]


def labeled(ids, offset=0, label="lost", topic="customer-feedback"):
    return [raw(offset + k, {"id": i, "text": f"text of {i}", "label": label}, topic)
            for k, i in enumerate(ids)]


def unlabeled(ids, offset=0, topic="customer-feedback"):
    return [raw(offset + k, {"id": i, "text": f"text of {i}"}, topic) for k, i in enumerate(ids)]


class Acks:
    """Records which batches were acked, in order."""

    def __init__(self):
        self.done: list[str] = []

    def __call__(self, name: str):
        async def ack():
            self.done.append(name)
        return ack


def make_split(tmp_path, model_dir: str, *, broker: Broker | None = None,
               pipelined: bool = False, **env):
    """A serving replica's flow and a trainer's flow over one in-memory broker:
    ``(serve_flow, train_flow, broker, registry)``; the samples the replica publishes are in
    ``broker.records("samples")`` (SampleRecords). Not ``pipelined`` (the replica's default):
    ``serve.handle`` returns once the batch is delivered and acknowledged."""
    from serving.service import Outputs
    from streamlearner.flows import ServeFlow, TrainFlow
    from streamlearner.roles import build_serving, build_trainer
    from streamlearner.settings import Settings
    from streams.acks import AckQueue, FailStop
    from streams.dedup import Deduplicator
    from streams.handoff import ModelThread

    base = {"CHECKPOINT_DIR": str(tmp_path / "ck"), "MODELS_STORE": str(tmp_path / "models"),
            "LEARNER_MODEL": model_dir, "LEARNER_MODE": "head", "LEARNER_DEVICE": "cpu",
            "STREAM_DEDUP_TEXT_WINDOW": "0", "METRICS_PROBE_SIZE": "0",
            "MEMORY_CAPACITY": "50", "GUARD_ENABLED": "false"}
    settings = Settings.from_env({**base, **{k: str(v) for k, v in env.items()}})
    broker = broker if broker is not None else Broker()
    reg = CollectorRegistry()
    metrics = Metrics(registry=reg, topics=list(settings.kafka.source_topics()) + ["samples"],
                      tasks=["feedback", "market"], reasons=[r.value for r in Reason],
                      outputs=list(TOPICS))
    policy = DeliveryPolicy(retries=1, backoff_s=0.0, backoff_max_s=0.0)

    def out(topic):
        return Output(topic, broker.sender(topic), metrics=metrics, policy=policy)

    serve_latch, train_latch = FailStop(metrics), FailStop(metrics)
    serving, _ = build_serving(
        settings, metrics=metrics, thread=ModelThread(), dedup=Deduplicator(text_window=0),
        outputs=Outputs(predictions=out("predictions").publish,
                        dead_letters=out("dead-letters").publish,
                        samples=out("samples").publish))
    serve = ServeFlow(serving, AckQueue(serve_latch, metrics), serving.outputs.samples,
                      pipelined=pipelined)
    trainer = build_trainer(settings, metrics=metrics, latch=train_latch, thread=ModelThread(),
                            drift_alerts=out("drift-alerts").publish,
                            model_events=out("model-events").publish,
                            versions=out("model-versions").send_and_wait,
                            dead_letters=out("dead-letters").publish)
    train = TrainFlow(trainer, tasks={"feedback", "market"}, limits=settings.stream,
                      dead_letters=out("dead-letters").publish, metrics=metrics)
    return serve, train, broker, reg


def sample_events(broker: Broker, start: int = 0, topic: str = "samples") -> list[RawEvent]:
    """The replica's samples as the trainer's agent would read them."""
    return [RawEvent(value=record.dumps(serializer="json"), topic=topic, partition=0,
                     offset=start + i, timestamp=0.0)
            for i, (_, record) in enumerate(broker.records("samples")[start:])]
