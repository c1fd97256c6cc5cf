"""What the worker does about drift: detect per task, alert, adapt. Free of Faust.

Per micro-batch the pipeline hands :meth:`DriftWatch.observe` the accepted texts and the
prequential outcomes of the labeled ones. One job on the model thread (never the event loop)
embeds the texts with the live encoder and feeds the three detectors of the task
(:mod:`monitoring.drift`). On a detection the policy is, in order:

1. **Rollback point**: unless an adaptation window is already open, the current model is saved
   to ``<CHECKPOINT_DIR>/pre-drift`` (lifecycle/layout.py; its own ``CHECKPOINT_KEEP_LAST``),
   with the detection in its ``extra``; ``streamlearner rollback --to V`` goes back to it.
2. **Boost**: ``learner.on_drift(task, ...)`` raises the learning rate and the replay ratio by
   ``DRIFT_ADAPT_LR_SCALE`` / ``DRIFT_ADAPT_REPLAY_SCALE`` for the next ``DRIFT_ADAPT_UPDATES``
   updates (plasticity for the new regime, rehearsal against forgetting the old one).
3. **Reset**: all three detectors of the task start over; the next ``DRIFT_REFERENCE`` events
   (the new regime) become the reference. One drift gives one alert, not three.

Then, back on the event loop, the detection is published to ``drift-alerts`` and counted.
The encoder is fine-tuned by the stream, so embeddings move even without drift: every
``DRIFT_REENCODE_UPDATES`` updates both windows are re-encoded with the live encoder.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from monitoring.drift import ConceptDrift, Detection, EmbeddingDrift, LabelShift
from monitoring.metrics import Metrics
from streams.handoff import ModelThread
from streams.records import DriftAlert
from lifecycle.config import DriftConfig

if TYPE_CHECKING:
    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner

log = logging.getLogger(__name__)

Publish = Callable[[Any, Any], Awaitable[Any]]


@dataclass
class TaskDrift:
    concept: ConceptDrift
    data: EmbeddingDrift
    label: LabelShift
    ref_texts: list[str] = field(default_factory=list)
    recent_texts: deque = field(default_factory=deque)
    encoded_at: int = 0   # model version the embedding windows were (re-)encoded with
    events: int = 0


class DriftWatch:
    """Detectors per task plus the adaptation policy; detector state lives on the model thread."""

    def __init__(self, config: DriftConfig, learner: Learner, metrics: Metrics,
                 model_thread: ModelThread, rollback: CheckpointManager | None = None):
        self.config = config
        self.learner = learner
        self.metrics = metrics
        self.model = model_thread
        self.rollback = rollback
        self.publish: Publish | None = None
        self._tasks: dict[str, TaskDrift] = {}
        self.last_detections: dict[str, dict] = {}

    def summary(self) -> dict:
        """For ``GET /status``: events seen and the last detection per task."""
        return {task: {"events": state.events, "last_detection": self.last_detections.get(task)}
                for task, state in list(self._tasks.items())}

    def _task(self, task: str) -> TaskDrift:
        state = self._tasks.get(task)
        if state is None:
            c = self.config
            window = dict(reference=c.reference, window=c.window, every=c.every,
                          p_value=c.p_value, permutations=c.permutations)
            state = self._tasks[task] = TaskDrift(
                concept=ConceptDrift(c.concept_detector, delta=c.adwin_delta,
                                     threshold=c.ph_threshold, grace=c.grace),
                data=EmbeddingDrift(**window), label=LabelShift(**window),
                recent_texts=deque(maxlen=c.window), encoded_at=self.learner.model_version)
        return state

    # -- event loop side ------------------------------------------------------------------
    async def observe(self, task: str, texts: Sequence[str], errors: Sequence[bool],
                      labels: Sequence[str], *,
                      before: Callable[[], Any] | None = None) -> list[Awaitable[Any]]:
        """Feed one micro-batch; returns the deliveries of any alerts (await them before ack).
        ``before`` runs first in the same model-thread job (a thread hop less per batch), and
        its failure is raised; a failure of the detection itself is logged and skipped."""
        if not self.config.enabled or not texts:
            if before is not None:
                await self.model.run(before)
            return []

        def job():
            if before is not None:
                before()
            try:
                return self._observe(task, list(texts), list(errors), list(labels))
            except Exception:   # drift detection must never stop ingestion
                log.exception("drift detection failed for a %s batch; skipped", task)
                return None

        observed = await self.model.run(job)
        if observed is None:
            return []
        detections, actions = observed
        deliveries = []
        for det, action in zip(detections, actions):
            self.metrics.drift_detections.labels(task=task, kind=det.kind,
                                                 detector=det.detector).inc()
            self.metrics.drift_last.labels(task=task).set(det.ts)
            log.warning("drift: task=%s kind=%s detector=%s statistic=%.4g p=%s -> %s", task,
                        det.kind, det.detector, det.statistic, det.p_value, action)
            if self.publish is not None:
                alert = DriftAlert(task=det.task, kind=det.kind, detector=det.detector,
                                   statistic=det.statistic, threshold=det.threshold,
                                   p_value=det.p_value, reference_size=det.reference_size,
                                   window_size=det.window_size, event=det.event,
                                   model_version=self.learner.model_version, action=action,
                                   ts=det.ts)
                deliveries.append(await self.publish(task, alert))
        return deliveries

    # -- model thread side ----------------------------------------------------------------
    def _observe(self, task: str, texts: list[str], errors: list[bool],
                 labels: list[str]) -> tuple[list[Detection], list[str]]:
        state = self._task(task)
        first = state.events
        state.events += len(texts)
        self._maybe_reencode(state)
        emb = self._embed(texts)                                            # (B, H)
        for text in texts:   # mirror of the detector's windows, for re-encoding
            if len(state.ref_texts) < state.data.reference:
                state.ref_texts.append(text)
            else:
                state.recent_texts.append(text)
        detections: list[Detection] = []
        m = self.metrics
        for k, error in enumerate(errors):
            if state.concept.update(float(error), task=task, event=first + k).drift_detected:
                detections.append(state.concept.last)
        m.drift_statistic.labels(task=task, kind="concept").set(state.concept.error_rate)
        end = first + len(texts) - 1
        for kind, det, items in (("data", state.data, emb), ("label", state.label, labels)):
            if not len(items):
                continue
            before = det.last_test
            det.update(items, task=task, event=end)
            if det.last_test is not before:
                m.drift_statistic.labels(task=task, kind=kind).set(det.last_test.statistic)
                m.drift_p_value.labels(task=task, kind=kind).set(det.last_test.p_value)
            if det.drift_detected:
                detections.append(det.last)
        actions = [self._adapt(task, state, det) for det in detections[:1]]
        if len(detections) > 1:   # same batch, same drift: one adaptation
            actions += ["boost"] * (len(detections) - 1)
        m.drift_adapting.set(self.learner.adapting)
        return detections, actions

    def _adapt(self, task: str, state: TaskDrift, det: Detection) -> str:
        c = self.config
        action = "boost"
        if self.learner.adapting == 0:
            action = "adapt"
            if self.rollback is not None:
                try:
                    path = self.rollback.save(self.learner, extra={"drift": det.as_dict()})
                    log.info("pre-drift rollback checkpoint %s", path)
                except Exception:   # adapting matters more than the rollback point
                    log.exception("could not save the pre-drift checkpoint")
                    action = "adapt_no_rollback"
        self.learner.on_drift(task, updates=c.adapt_updates, lr_scale=c.adapt_lr_scale,
                              replay_scale=c.adapt_replay_scale)
        state.concept.reset()
        state.data.reset_reference()
        state.label.reset_reference()
        state.ref_texts.clear()
        state.recent_texts.clear()
        state.encoded_at = self.learner.model_version
        self.last_detections[task] = {**det.as_dict(), "action": action,
                                      "model_version": self.learner.model_version}
        return action

    def _maybe_reencode(self, state: TaskDrift) -> None:
        if self.learner.model_version - state.encoded_at < self.config.reencode_updates:
            return
        if self.learner.config.frozen:   # a frozen encoder gives the same embeddings again
            state.encoded_at = self.learner.model_version
            return
        import torch

        started = time.perf_counter()
        self.learner.model.eval()
        with torch.inference_mode():
            if state.ref_texts and len(state.ref_texts) == len(state.data._ref):
                state.data.replace_reference(self._encode(state.ref_texts))
            if state.recent_texts and len(state.recent_texts) == len(state.data._recent):
                state.data.replace_recent(self._encode(list(state.recent_texts)))
        state.encoded_at = self.learner.model_version
        log.info("re-encoded drift windows in %.1fs", time.perf_counter() - started)

    def _embed(self, texts: list[str]):
        """(B, H) float32 numpy embeddings of one batch with the live encoder.

        A frozen encoder (``mode="head"``) reads the learner's feature cache: the batch was
        just predicted, so its features are there and the encoder does not run again."""
        import torch

        if self.learner.config.frozen:
            return self.learner.features.get(texts, store=False).numpy()
        self.learner.model.eval()
        with torch.inference_mode():
            return self.learner.model.encode(texts).float().cpu().numpy()

    def _encode(self, texts: list[str]):
        if self.learner.config.frozen:   # same encoder, same features: the cache has most
            return self.learner.features.get(texts, store=False).numpy()
        chunks = [self.learner.model.encode(texts[i:i + 128]).float().cpu().numpy()
                  for i in range(0, len(texts), 128)]
        import numpy as np

        return np.concatenate(chunks)
