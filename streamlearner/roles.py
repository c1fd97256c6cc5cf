"""The role commands, wired: ``worker`` (all-in-one), ``serve`` (replicas), ``train`` (trainer).

* **worker** — both halves in one process: source topics → serving (its own copy of the
  model, on the serving thread) → the co-located trainer (the learner, on the model thread).
  A batch's acks wait for the checkpoint that holds it. The serving copy follows the trainer
  after every update in head mode, so the stream is still predicted before it is learned;
  ``/predict`` never waits behind training. Versions also go to the model-versions topic, so
  ``serve`` replicas can run beside a worker.
* **serve** — N replicas in the consumer group ``<KAFKA_APP_ID>-serve`` over the source
  topics: serving, predictions, and every accepted sample to the samples topic; a batch is
  acknowledged once its outputs are delivered. Versions arrive from the model-versions topic.
* **train** — one trainer, consumer group ``<KAFKA_APP_ID>-train``, over the samples topic:
  exactly-once training (ack after checkpoint), guard, drift, journal, versions published.

Only this module knows every room.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from streamlearner.flows import LabelFlow, ServeFlow, TrainFlow, WorkerFlow
from streamlearner.settings import Settings

log = logging.getLogger(__name__)

EXIT_FAILED = 3   # the batch path failed: nothing acknowledged past it; restart to redeliver
ROLES = ("worker", "serve", "train")


@dataclass
class Role:
    """A built role: its Faust app and what stopping it needs."""

    name: str
    settings: Settings
    app: Any
    latch: Any
    metrics: Any
    drain: Callable[[], Any]
    close: Callable[[], None]
    checkpoint_now: Callable[[], None] = lambda: None
    version: Callable[[], int] = lambda: 0
    parts: dict = field(default_factory=dict)


def _label_agent(app, settings: Settings, trainer) -> None:
    """The labels topic's agent (worker and train roles), when the label join is on."""
    from streams.agents.ingest import register_ingest_agent

    if trainer.labels is None:
        return
    topic = app.topic(settings.kafka.labels_topic, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    register_ingest_agent(app, topic, "labels", LabelFlow(trainer).handle,
                          batch_size=settings.stream.batch_size,
                          max_wait_s=settings.stream.max_wait_s, name="join")


# -- building blocks ------------------------------------------------------------------------

def tasks_of(settings: Settings) -> list[str]:
    return sorted(settings.kafka.task_names())


def build_metrics(settings: Settings):
    from monitoring.metrics import Metrics
    from streams.records import Reason

    k = settings.kafka
    drift = settings.drift
    return Metrics(topics=list(k.source_topics()) + [k.samples_topic, k.labels_topic],
                   tasks=tasks_of(settings),
                   reasons=[r.value for r in Reason],
                   prequential_window=settings.metrics.prequential_window,
                   drift_detectors=[("concept", drift.concept_detector), ("data", "mmd"),
                                    ("label", "chi2")],
                   outputs=k.output_topics())


def build_trainer(settings: Settings, *, metrics, latch, thread, learner=None,
                  drift_alerts=None, model_events=None, versions=None, local=None,
                  tracker=None, dead_letters=None):
    """Learner (built on ``thread`` unless given), checkpoints, journal, guard, drift and the
    version publisher -> a restored :class:`~lifecycle.trainer.Trainer`. ``drift_alerts`` /
    ``model_events``: ``Output.publish`` of those topics; ``versions``: ``send_and_wait`` of
    model-versions; ``local``: the co-located serving copy's swap (worker); ``tracker``: a
    :class:`~tracking.mlflow_tracker.Tracker` (default: from TRACKING_* settings, or none)."""
    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner
    from lifecycle.adaptation import DriftWatch
    from lifecycle.durability import Durability
    from lifecycle.guard import StabilityGuard
    from lifecycle.journal import UpdateJournal
    from lifecycle.layout import CheckpointLayout
    from lifecycle.probes import ProbeSets
    from lifecycle.publishing import ModelStore, VersionPublisher
    from lifecycle.trainer import Trainer
    from streams.acks import AckQueue
    from streams.dedup import Deduplicator

    ck = settings.checkpoint
    layout = CheckpointLayout(ck.dir)
    if learner is None:
        # Built on its own thread: torch state stays with the thread that uses it.
        learner = thread.call(Learner, settings.learner, settings.memory)
    checkpoints = CheckpointManager(layout.checkpoints, keep_last=ck.keep_last)
    journal = UpdateJournal(layout.journal) if ck.journal else None
    dedup = Deduplicator(id_capacity=settings.stream.dedup_ids,
                         text_window=settings.stream.dedup_text_window)
    probes = ProbeSets(size=settings.metrics.probe_size, every=settings.metrics.probe_every)
    trainer_ref: list = []
    durability = Durability(ck, learner=learner, thread=thread, checkpoints=checkpoints,
                            journal=journal, acks=AckQueue(latch, metrics), metrics=metrics,
                            extra=lambda: trainer_ref[0].extra_state())
    drift = DriftWatch(settings.drift, learner, metrics, thread,
                       CheckpointManager(layout.pre_drift, keep_last=ck.keep_last))
    drift.publish = drift_alerts
    guard = champion = None
    if settings.guard.enabled:
        guard = StabilityGuard(margin=settings.guard.margin, min_probe=settings.guard.min_probe)
        champion = CheckpointManager(layout.champion, keep_last=1)
    publisher = VersionPublisher(settings.models, trainer_id=settings.kafka.app_id,
                                 thread=thread, metrics=metrics,
                                 store=ModelStore(settings.models.store), send=versions,
                                 local=local)
    labels = None
    if settings.labels.enabled:
        from lifecycle.labeling import LabelJoin

        labels = LabelJoin(settings.labels,
                           tasks={t.name: t.labels for t in settings.kafka.task_specs()},
                           directory=layout.labels, metrics=metrics,
                           window=settings.metrics.prequential_window)
    trainer = Trainer(learner=learner, thread=thread, metrics=metrics, durability=durability,
                      dedup=dedup, probes=probes,
                      evaluate_every=settings.metrics.probe_every_updates, drift=drift,
                      guard=guard, champion=champion, publisher=publisher,
                      model_events=model_events, keep_last=ck.keep_last, labels=labels,
                      dead_letters=dead_letters,
                      dead_letter_max_bytes=settings.stream.dead_letter_max_bytes)
    trainer_ref.append(trainer)
    trainer.restore()
    # Experiment tracking (off unless TRACKING_URI / MLFLOW_TRACKING_URI): a callback after
    # each delivered version record, queued for a background thread (tracking/versions.py).
    from tracking.versions import track_versions

    trainer.tracking = track_versions(trainer, settings, tracker=tracker,
                                      role="worker" if local is not None else "train")
    return trainer


def build_serving(settings: Settings, *, metrics, thread, outputs, dedup):
    """The serving half on ``thread``: its own base encoder, an empty version 0 until the
    first version arrives. Returns ``(serving, base)``."""
    from learner.model import default_model_path, resolve_device
    from lifecycle.layout import CheckpointLayout
    from serving.models import ServedModels
    from serving.service import Serving
    from serving.snapshot import ModelSnapshot, base_classifier

    cfg = settings.learner
    base = thread.call(base_classifier, cfg.model or default_model_path(),
                       max_length=cfg.max_length, device=resolve_device(cfg.device),
                       precision=settings.serve.precision, trace=settings.serve.trace)
    mode = "head" if cfg.frozen else cfg.mode
    models = ServedModels(thread.call(ModelSnapshot.empty, base, mode=mode),
                          serve=settings.serve.model,
                          student_dir=settings.serve.student_dir or CheckpointLayout(
                              settings.checkpoint.dir).student,
                          learner_config=cfg, metrics=metrics)
    serving = Serving(limits=settings.stream, serve=settings.serve, metrics=metrics,
                      thread=thread, models=models, outputs=outputs, dedup=dedup,
                      task_labels={t.name: t.labels for t in settings.kafka.task_specs()})
    return serving, base


def serving_outputs(app, settings: Settings, *, metrics, policy, samples: bool = False):
    from serving.service import Outputs
    from streams.app import output
    from streams.records import DeadLetter, ExplanationRecord, Prediction, SampleRecord

    k = settings.kafka
    return Outputs(
        predictions=output(app, k.predictions_topic, metrics=metrics, policy=policy,
                           value_type=Prediction).publish,
        dead_letters=output(app, k.dead_letter_topic, metrics=metrics, policy=policy,
                            value_type=DeadLetter).publish,
        explanations=output(app, k.explanations_topic, metrics=metrics, policy=policy,
                            value_type=ExplanationRecord).publish,
        samples=(output(app, k.samples_topic, metrics=metrics, policy=policy,
                        value_type=SampleRecord).publish if samples else None))


def trainer_outputs(app, settings: Settings, *, metrics, policy) -> dict:
    from streams.app import output
    from streams.records import DeadLetter, DriftAlert, ModelEvent

    k = settings.kafka
    return {"drift_alerts": output(app, k.drift_topic, metrics=metrics, policy=policy,
                                   value_type=DriftAlert).publish,
            "model_events": output(app, k.model_events_topic, metrics=metrics, policy=policy,
                                   value_type=ModelEvent).publish,
            "versions": output(app, k.model_versions_topic, metrics=metrics,
                               policy=policy).send_and_wait,
            "dead_letters": output(app, k.dead_letter_topic, metrics=metrics, policy=policy,
                                   value_type=DeadLetter).publish}


def assemble_worker(settings: Settings, *, metrics, latch, model_thread, serving_thread,
                    serving_outputs, trainer_outputs: dict, learner=None):
    """Serving + trainer + their batch flow, without Faust (build_worker and tests)."""
    from lifecycle.publishing import artifact_from_learner
    from serving.snapshot import ModelSnapshot
    from streams.dedup import Deduplicator

    parts: dict = {}

    async def local(artifact, published_ts):
        # Built off the serving thread: queued behind the batch it is encoding, every update
        # of the learning tail waited for the next batch's encoding (head mode refreshes after
        # each update), and the one-batch-deep pipeline ran serially (docs/performance.md).
        serving, base = parts["serving"], parts["base"]
        snapshot = await asyncio.to_thread(ModelSnapshot.from_artifact, artifact, base,
                                           published_ts=published_ts)
        serving.models.swap(snapshot)

    trainer = build_trainer(settings, metrics=metrics, latch=latch, thread=model_thread,
                            learner=learner, local=local, **trainer_outputs)
    # Serving drops ids the trainer already holds, with its own copy of the trainer's dedup
    # (restored from the checkpoint); the trainer's exact one checks them again when it learns.
    dedup = Deduplicator(id_capacity=settings.stream.dedup_ids, text_window=0)
    dedup.load_state_dict(trainer.dedup.state_dict())
    serving, base = build_serving(settings, metrics=metrics, thread=serving_thread,
                                  outputs=serving_outputs, dedup=dedup)
    parts.update(serving=serving, base=base)
    # The serving copy starts at the resumed version, before the first batch is predicted.
    artifact = model_thread.call(artifact_from_learner, trainer.learner)
    serving.models.swap(serving_thread.call(ModelSnapshot.from_artifact, artifact, base))
    serving_thread.call(serving.models.maybe_reload_student)
    return WorkerFlow(serving, trainer, lanes=getattr(serving_thread, "workers", 1))


def _source_agents(app, settings: Settings, handle) -> None:
    from streams.agents.ingest import register_ingest_agent

    stream = settings.stream
    for spec in settings.kafka.task_specs():
        for topic_name in spec.topics:
            source = app.topic(topic_name, value_type=bytes, value_serializer="raw",
                               key_serializer="raw")
            register_ingest_agent(
                app, source, spec.name, handle,
                batch_size=spec.batch_size or stream.batch_size,
                max_wait_s=spec.max_wait_s or stream.max_wait_s,
                name=f"ingest-{topic_name}" if len(spec.topics) > 1 else "ingest")


def _consumed(settings: Settings, trainer) -> set[str]:
    topics = set(settings.kafka.source_topics())
    if trainer.labels is not None:
        topics.add(settings.kafka.labels_topic)
    return topics


def _student_timer(app, settings: Settings, serving) -> None:
    if serving.models.serve != "student":
        return

    @app.timer(interval=settings.serve.reload_interval_s)
    async def reload_student():
        await serving.thread.run(serving.models.maybe_reload_student)


def _trainer_timers(app, trainer) -> None:
    @app.timer(interval=min(1.0, trainer.durability.config.idle_s))
    async def flush_idle():
        # Events wait for a checkpoint before their offsets are committed; when the stream
        # goes quiet, make them durable now rather than at the next batch.
        try:
            await trainer.flush_if_idle()
        except Exception as exc:   # a timer that raises would die silently
            trainer.latch.fail("checkpoint", exc)

    @app.task
    async def announce():
        try:
            await trainer.announce_start()
        except Exception:
            log.exception("could not announce the resumed model version")


def serving_lanes(settings: Settings) -> tuple[int, int | None]:
    """(serving threads, torch threads each; None: the process's) of the worker (SERVE_LANES:
    0 is one per torch thread on a CPU, 1 on an accelerator)."""
    import torch

    threads = torch.get_num_threads()
    lanes = settings.serve.lanes
    if lanes == 0:
        device = settings.learner.device
        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        lanes = threads if on_cpu else 1
    if lanes <= 1:
        return 1, None
    return lanes, max(1, threads // lanes)


def _threads(settings: Settings, name: str = "streamlearner-model"):
    import torch

    from streams.handoff import ModelThread

    # Its intra-op thread count pinned now: a thread that sets its own (serving lanes) also
    # changes the default of threads started after it (this torch build's OpenMP runtime).
    return ModelThread(queue_size=settings.stream.handoff_queue, name=name,
                       torch_threads=torch.get_num_threads())


# -- the roles --------------------------------------------------------------------------------

def build_worker(settings: Settings) -> Role:
    """All-in-one: serving and training in one process (the embedded default)."""
    from lifecycle.layout import CheckpointLayout
    from serving.api import register_api
    from streams.acks import FailStop
    from streams.app import add_lag_timer, create_app, delivery_policy
    from streams.handoff import ModelThread

    metrics = build_metrics(settings)
    latch = FailStop(metrics)
    policy = delivery_policy(settings.stream)
    model_thread = _threads(settings)
    lanes, per_lane = serving_lanes(settings)
    serving_thread = ModelThread(queue_size=max(2, settings.stream.handoff_queue) + lanes - 1,
                                 name="streamlearner-serving", workers=lanes,
                                 torch_threads=per_lane)
    flow_ref: list = []
    app = create_app(settings, app_id=settings.kafka.app_id,
                     data_dir=str(CheckpointLayout(settings.checkpoint.dir).faust_data()),
                     registry=metrics.registry, latch=latch,
                     health=lambda: {"model_version": flow_ref[0].trainer.learner.model_version})
    flow = assemble_worker(
        settings, metrics=metrics, latch=latch, model_thread=model_thread,
        serving_thread=serving_thread,
        serving_outputs=serving_outputs(app, settings, metrics=metrics, policy=policy),
        trainer_outputs=trainer_outputs(app, settings, metrics=metrics, policy=policy))
    flow_ref.append(flow)
    trainer, serving = flow.trainer, flow.serving
    _source_agents(app, settings, flow.handle)
    _label_agent(app, settings, trainer)
    add_lag_timer(app, metrics, _consumed(settings, trainer), settings.metrics.lag_interval_s)
    _trainer_timers(app, trainer)
    _student_timer(app, settings, serving)
    register_api(app, tasks=tasks_of(settings), max_chars=settings.stream.max_text_chars,
                 admin_token=settings.serve.admin_token, serving=serving, trainer=trainer)

    def close() -> None:
        serving_thread.close()
        model_thread.close()
        if trainer.durability.journal is not None:
            trainer.durability.journal.close()
        if trainer.tracking is not None:
            trainer.tracking.close()

    return Role("worker", settings, app, latch, metrics, drain=flow.drain, close=close,
                checkpoint_now=trainer.durability.checkpoint_now,
                version=lambda: trainer.learner.model_version,
                parts={"trainer": trainer, "serving": serving, "flow": flow})


def build_serve(settings: Settings) -> Role:
    """A serving replica: predictions and samples; versions from the model-versions topic."""
    from lifecycle.layout import CheckpointLayout
    from lifecycle.publishing import ModelStore, base_model_id
    from serving.api import register_api
    from serving.follower import VersionFollower
    from streams.acks import AckQueue, FailStop
    from streams.app import add_lag_timer, create_app, delivery_policy, kafka_consumer
    from streams.dedup import Deduplicator

    metrics = build_metrics(settings)
    latch = FailStop(metrics)
    policy = delivery_policy(settings.stream)
    thread = _threads(settings, "streamlearner-serving")
    app_id = f"{settings.kafka.app_id}-serve"
    serving_ref: list = []
    app = create_app(settings, app_id=app_id,
                     data_dir=str(CheckpointLayout(settings.checkpoint.dir).faust_data("serve")),
                     registry=metrics.registry, latch=latch,
                     health=lambda: {"model_version": serving_ref[0].models.model_version})
    # Best-effort id dedup: a replica keeps no state; the trainer's dedup is the exact one.
    dedup = Deduplicator(id_capacity=settings.stream.dedup_ids, text_window=0)
    serving, base = build_serving(
        settings, metrics=metrics, thread=thread, dedup=dedup,
        outputs=serving_outputs(app, settings, metrics=metrics, policy=policy, samples=True))
    serving_ref.append(serving)
    thread.call(serving.models.maybe_reload_student)
    follower = VersionFollower(serving.models, base=base, base_model=base_model_id(base),
                               store=ModelStore(settings.models.store), metrics=metrics)
    flow = ServeFlow(serving, AckQueue(latch, metrics), serving.outputs.samples)
    _source_agents(app, settings, flow.handle)
    add_lag_timer(app, metrics, set(settings.kafka.source_topics()),
                  settings.metrics.lag_interval_s)
    _student_timer(app, settings, serving)
    register_api(app, tasks=tasks_of(settings), max_chars=settings.stream.max_text_chars,
                 admin_token=settings.serve.admin_token, serving=serving,
                 ready=follower.caught_up.is_set)

    @app.task
    async def follow_versions():
        while not latch.failed:
            consumer = kafka_consumer(settings.kafka, client_id=f"{app_id}-versions")
            try:
                await consumer.start()
                await follower.run(consumer, settings.kafka.model_versions_topic)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following model versions failed; retrying in 2 s")
                await asyncio.sleep(2.0)
            finally:
                try:
                    await consumer.stop()
                except Exception:
                    pass

    return Role("serve", settings, app, latch, metrics, drain=flow.drain, close=thread.close,
                version=lambda: serving.models.model_version,
                parts={"serving": serving, "follower": follower, "flow": flow})


def _lead_ranks(app, settings: Settings, thread, latch):
    """Rank 0 of a trainer made of several ranks (``train --nproc-per-node N`` or torchrun):
    a learner that leads the others (learner/distributed.py, docs/distributed.md); None in a
    one-process trainer. A rank lost while idle (the heartbeat failed) fail-stops the role."""
    from learner.distributed import DistributedLearner, init, ranks_from_env

    ranks = ranks_from_env()
    if ranks is None:
        return None
    config, group = init(settings.learner, ranks)
    learner = thread.call(DistributedLearner, config, settings.memory, group=group)

    @app.timer(interval=1.0)
    async def ranks_alive():
        if learner.failure is not None and not latch.failed:
            latch.fail("learn", learner.failure)

    return learner


def _end_ranks(learner) -> None:
    """Tell the other ranks to stop, then leave the process group (rank 0 of several)."""
    import torch.distributed as dist

    learner.stop()
    dist.destroy_process_group()


def build_train(settings: Settings) -> Role:
    """The trainer: learns from the samples topic and publishes model versions."""
    from lifecycle.layout import CheckpointLayout
    from serving.api import register_api
    from streams.acks import FailStop
    from streams.agents.ingest import register_ingest_agent
    from streams.app import add_lag_timer, create_app, delivery_policy
    from streams.topics import newest_record

    metrics = build_metrics(settings)
    latch = FailStop(metrics)
    policy = delivery_policy(settings.stream)
    thread = _threads(settings)
    k = settings.kafka
    trainer_ref: list = []
    app = create_app(settings, app_id=f"{k.app_id}-train",
                     data_dir=str(CheckpointLayout(settings.checkpoint.dir).faust_data("train")),
                     registry=metrics.registry, latch=latch,
                     health=lambda: {"model_version": trainer_ref[0].learner.model_version})
    leader = _lead_ranks(app, settings, thread, latch)
    trainer = build_trainer(settings, metrics=metrics, latch=latch, thread=thread, learner=leader,
                            **trainer_outputs(app, settings, metrics=metrics, policy=policy))
    trainer_ref.append(trainer)
    from lifecycle.publishing import ArtifactError, VersionRecord

    try:
        raw = newest_record(k.servers, k.model_versions_topic, key=k.app_id.encode(),
                            client_kwargs=k.client_kwargs())
        if raw is not None:
            trainer.publisher.resume_after(VersionRecord.from_json(raw))
    except ArtifactError as err:
        log.warning("the newest model-versions record is not readable (%s); publishing "
                    "continues from the checkpoint's sequence", err)
    flow = TrainFlow(trainer, tasks=set(tasks_of(settings)), limits=settings.stream,
                     dead_letters=trainer.dead_letters, metrics=metrics)
    samples = app.topic(k.samples_topic, value_type=bytes, value_serializer="raw",
                        key_serializer="raw")
    register_ingest_agent(app, samples, "samples", flow.handle,
                          batch_size=settings.stream.batch_size,
                          max_wait_s=settings.stream.max_wait_s, name="train")
    _label_agent(app, settings, trainer)
    add_lag_timer(app, metrics, {k.samples_topic} | (
        {k.labels_topic} if trainer.labels is not None else set()),
        settings.metrics.lag_interval_s)
    _trainer_timers(app, trainer)
    register_api(app, tasks=tasks_of(settings), max_chars=settings.stream.max_text_chars,
                 admin_token=settings.serve.admin_token, trainer=trainer)

    def close() -> None:
        thread.close()
        if leader is not None:
            _end_ranks(leader)
        if trainer.durability.journal is not None:
            trainer.durability.journal.close()
        if trainer.tracking is not None:
            trainer.tracking.close()

    return Role("train", settings, app, latch, metrics, drain=flow.drain, close=close,
                checkpoint_now=trainer.durability.checkpoint_now,
                version=lambda: trainer.learner.model_version,
                parts={"trainer": trainer, "flow": flow})


BUILDERS = {"worker": build_worker, "serve": build_serve, "train": build_train}


# -- running one --------------------------------------------------------------------------------

def _worker_class():
    import faust

    class DrainingWorker(faust.Worker):
        """On SIGTERM / SIGINT: drain (finish the batch, checkpoint, ack), then stop as Faust
        does. A second signal stops at once."""

        drain = None
        _draining = False

        def _drain_then(self, stop) -> None:
            if self._draining or self.drain is None:
                stop()
                return
            self._draining = True

            async def drain_and_stop():
                try:
                    await asyncio.wait_for(self.drain(), timeout=120)
                except Exception:   # stopping matters more than a clean drain
                    log.exception("drain before stop failed; un-acked events will be redelivered")
                stop()

            self.loop.create_task(drain_and_stop())

        def _on_sigterm(self) -> None:
            self._drain_then(super()._on_sigterm)

        def _on_sigint(self) -> None:
            self._drain_then(super()._on_sigint)

        def on_setup_root_logger(self, logger, level: int) -> None:
            # At WARNING and above Faust adds a terminal spinner that turns every log call into
            # a record: it sets the root logger to DEBUG and spins once per record. aiokafka
            # logs at DEBUG for every produced record, so that cost 15% of a replica's event
            # loop (measured with py-spy). A service has no terminal to spin: no spinner.
            self.spinner = None
            super().on_setup_root_logger(logger, level)

    return DrainingWorker


def run_role(name: str, settings: Settings, *, loglevel: str = "info") -> int:
    """Run a role until stopped; 0 after a clean stop, :data:`EXIT_FAILED` after a fail-stop."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # `_created` series double the scrape for no dashboard use
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would flood the log
    os.makedirs(settings.checkpoint.dir, exist_ok=True)
    log.info("role %s, settings: %r", name, settings)
    role = BUILDERS[name](settings)
    worker = _worker_class()(role.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.drain = role.drain
    # A fail-stop stops the process as SIGTERM does; the drain then does nothing (no ack,
    # no checkpoint), so Kafka redelivers everything after the last checkpoint.
    role.latch.on_failure = lambda failure: worker._on_sigterm()
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        role.checkpoint_now()
        role.close()
        log.info("%s stopped at model version %d", name, role.version())
    if role.latch.failed:
        log.error("%s exits with code %d: %s", name, EXIT_FAILED, role.latch.failure)
        return EXIT_FAILED
    return 0


def run_worker(settings: Settings, *, loglevel: str = "info") -> int:
    return run_role("worker", settings, loglevel=loglevel)
