"""The worker's (or trainer's) MLflow run: one step per published model version.

:func:`track_versions` wraps the trainer's version publisher's ``send`` (the model-versions
topic): once a record is delivered, the version is logged as a step of the role's run —
probe accuracy and forgetting per task, prequential accuracy and loss per task, drift
detections, rollbacks, skipped updates, the champion version — read from the trainer's
numbers on the event loop (a few dictionary reads) and queued for the tracker's thread.
With ``TRACKING_REGISTER_MODEL`` set, each new champion of the stability guard (a version
that passed it) is registered: its checkpoint folder uploaded as ``champion/v<N>`` and a
model version created. Nothing here waits for MLflow.
"""

from __future__ import annotations

import logging
from typing import Any

from .mlflow_tracker import Tracker, TrackingMetrics

log = logging.getLogger(__name__)

__all__ = ["VersionTracking", "build_tracker", "track_versions"]


def build_tracker(config, registry, environ=None) -> Tracker | None:
    """A tracker for a :class:`~tracking.config.TrackingConfig` (None when tracking is off)."""
    uri = config.resolve_uri(environ)
    if not uri:
        return None
    return Tracker(uri, experiment=config.experiment, metrics=TrackingMetrics(registry),
                   queue_size=config.queue_size, timeout_s=config.timeout_s)


def _sum(registry, name: str, **labels) -> float:
    """Sum of a metric's samples matching ``labels`` (0 when absent)."""
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class VersionTracking:
    def __init__(self, trainer, tracker: Tracker, *, role: str, run_name: str,
                 params: dict, register_model: str = "") -> None:
        self.trainer = trainer
        self.tracker = tracker
        self.register_model = register_model
        self.run = tracker.start_run(run_name, params=params, tags={"streamlearner.role": role})
        self.registered: int | None = None
        self.steps = 0

    def wrap(self, send):
        """``send`` (async key, value) -> the same, plus a tracking step after delivery."""
        async def tracked_send(key, value):
            result = await send(key, value)
            try:
                self.published(value)
            except Exception:   # tracking never fails a publication
                log.debug("tracking a published version failed", exc_info=True)
            return result
        return tracked_send

    def snapshot(self) -> dict[str, float]:
        t = self.trainer
        m = t.metrics
        reg = m.registry
        out: dict[str, float] = {"model_version": float(t.learner.model_version)}
        for task, acc in t.probes.accuracy.items():
            out[f"probe_accuracy.{task}"] = acc
            out[f"forgetting.{task}"] = t.probes.best.get(task, acc) - acc
        for task in t.learner.tasks():
            out[f"prequential_accuracy.{task}"] = m.prequential(task)
            loss = reg.get_sample_value("streamlearner_learner_loss", {"task": task})
            if loss is not None:
                out[f"loss.{task}"] = loss
        out["drift_detections"] = _sum(reg, "streamlearner_learner_drift_detections_total")
        out["rollbacks"] = _sum(reg, "streamlearner_learner_rollbacks_total")
        out["skipped_updates"] = _sum(reg, "streamlearner_learner_skipped_updates_total")
        out["trained_samples"] = _sum(reg, "streamlearner_learner_samples_total", kind="new")
        if t.guard is not None and t.guard.version is not None:
            out["champion_version"] = float(t.guard.version)
        return out

    def published(self, value: Any) -> None:
        """A version record was delivered: log its step (and register a new champion)."""
        import orjson

        record = orjson.loads(value) if isinstance(value, (bytes, str)) else {}
        version = int(record.get("version", self.trainer.learner.model_version))
        numbers = self.snapshot()
        # The step is the delivered record's version; the learner may already be past it
        # (learning goes on while a publication is in flight), the other numbers are live.
        numbers["model_version"] = float(version)
        numbers["sequence"] = float(record.get("sequence", 0))
        numbers["rollback"] = 1.0 if record.get("kind") == "rollback" else 0.0
        self.run.log_metrics(numbers, step=version)
        self.steps += 1
        guard, champion = self.trainer.guard, self.trainer.champion
        if (self.register_model and guard is not None and champion is not None
                and guard.version is not None and guard.version != self.registered):
            self.registered = guard.version
            probe = {f"probe_accuracy.{k}": v for k, v in guard.accuracy.items()}
            self.run.register(self.register_model, champion.latest,
                              artifact_path=f"champion/v{guard.version}",
                              tags={"model_version": guard.version, **probe})

    def close(self, timeout: float = 5.0) -> bool:
        self.run.end()
        return self.tracker.close(timeout)


def track_versions(trainer, settings, *, role: str, tracker: Tracker | None = None,
                   environ=None) -> VersionTracking | None:
    """Hook tracking into ``trainer``'s publisher when tracking is configured (or a
    ``tracker`` is given); None when off."""
    tracker = tracker if tracker is not None else build_tracker(settings.tracking,
                                                               trainer.metrics.registry, environ)
    if tracker is None or trainer.publisher is None or trainer.publisher.send is None:
        if tracker is not None:
            tracker.close(0.1)
        return None
    from tuning.space import default_params

    cfg = settings.tracking
    name = cfg.run_name or f"{role} {settings.kafka.app_id}"
    params = {**default_params(settings), "role": role, "LEARNER_MODEL": settings.learner.model or "bundled",
              "GUARD_ENABLED": settings.guard.enabled}
    tracking = VersionTracking(trainer, tracker, role=role, run_name=name, params=params,
                               register_model=cfg.register_model)
    trainer.publisher.send = tracking.wrap(trainer.publisher.send)
    log.info("tracking %s to %s (experiment %s)", role, tracker.uri, cfg.experiment)
    return tracking
