"""Runs one worker process: learner + checkpoint restore + Faust app, final checkpoint on stop."""

from __future__ import annotations

import logging
import os

from streams.settings import Settings

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings):
    """Learner, metrics, model thread, checkpoints, dedup -> a restored :class:`Pipeline`."""
    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner
    from learner.serving import ServingModel
    from monitoring.metrics import Metrics
    from streams.adaptation import DriftWatch, rollback_manager
    from streams.guard import StabilityGuard
    from streams.handoff import ModelThread
    from streams.journal import UpdateJournal
    from streams.pipeline import Pipeline
    from streams.records import Reason

    model_thread = ModelThread(queue_size=settings.stream.handoff_queue)
    # The model is built on its own thread: torch state stays with the thread that uses it.
    learner = model_thread.call(Learner, settings.learner, settings.memory)
    drift = settings.drift
    metrics = Metrics(topics=settings.kafka.source_topics(), tasks=["feedback", "market"],
                      reasons=[r.value for r in Reason],
                      prequential_window=settings.metrics.prequential_window,
                      drift_detectors=[("concept", drift.concept_detector), ("data", "mmd"),
                                       ("label", "chi2")],
                      outputs=[k for k in settings.kafka.all_topics()
                               if k not in settings.kafka.source_topics()])
    checkpoints = CheckpointManager(settings.checkpoint.dir, keep_last=settings.checkpoint.keep_last)
    watch = DriftWatch(drift, learner, metrics, model_thread,
                       rollback_manager(settings.checkpoint.dir, settings.checkpoint.keep_last))
    serving = ServingModel(learner, serve=settings.serve.model,
                           student_dir=student_dir(settings))
    ck = settings.checkpoint
    journal = UpdateJournal(os.path.join(ck.dir, "journal.jsonl")) if ck.journal else None
    guard = champion = None
    if settings.guard.enabled:
        guard = StabilityGuard(margin=settings.guard.margin, min_probe=settings.guard.min_probe)
        champion = CheckpointManager(os.path.join(ck.dir, "champion"), keep_last=1)
    pipeline = Pipeline(settings, learner, metrics, model_thread, checkpoints, drift=watch,
                        serving=serving, journal=journal, guard=guard, champion=champion)
    pipeline.restore()
    model_thread.call(serving.maybe_reload)
    return pipeline


def student_dir(settings: Settings) -> str:
    return settings.serve.student_dir or os.path.join(settings.checkpoint.dir, "student")


def _worker_class():
    import asyncio

    import faust

    class DrainingWorker(faust.Worker):
        """On SIGTERM / SIGINT: drain the pipeline (finish the batch, checkpoint, ack), then
        stop as Faust does. A second signal stops at once."""

        pipeline = None
        _draining = False

        def _drain_then(self, stop) -> None:
            if self._draining or self.pipeline is None:
                stop()
                return
            self._draining = True

            async def drain_and_stop():
                try:
                    await asyncio.wait_for(self.pipeline.drain(), timeout=120)
                except Exception:   # stopping matters more than a clean drain
                    log.exception("drain before stop failed; un-acked events will be redelivered")
                stop()

            self.loop.create_task(drain_and_stop())

        def _on_sigterm(self) -> None:
            self._drain_then(super()._on_sigterm)

        def _on_sigint(self) -> None:
            self._drain_then(super()._on_sigint)

    return DrainingWorker


EXIT_FAILED = 3   # the batch path failed: nothing acknowledged past it; restart to redeliver


def run_worker(settings: Settings, *, loglevel: str = "info") -> int:
    """Run until stopped; 0 after a clean stop, :data:`EXIT_FAILED` after a fail-stop."""
    from streams.app import create_app

    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # `_created` series double the scrape for no dashboard use
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would flood the worker log
    os.makedirs(settings.checkpoint.dir, exist_ok=True)
    log.info("settings: %r", settings)
    pipeline = build_pipeline(settings)
    app = create_app(settings, pipeline)
    worker = _worker_class()(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.pipeline = pipeline
    # A fail-stop stops the worker as SIGTERM does; the drain then does nothing (no ack,
    # no checkpoint), so Kafka redelivers everything after the last checkpoint.
    pipeline.on_failure = lambda failure: worker._on_sigterm()
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        pipeline.checkpoint_now()
        pipeline.model.close()
        if pipeline.journal is not None:
            pipeline.journal.close()
        log.info("worker stopped at model version %d", pipeline.learner.model_version)
    if pipeline.failed:
        log.error("worker exits with code %d: %s", EXIT_FAILED, pipeline.failure)
        return EXIT_FAILED
    return 0
