"""Replay a recorded stream through the worker's learner: delayed-prequential accuracy.

The same :class:`~learner.learner.Learner` the worker and ``bench continual`` run, built from
the same :class:`~streamlearner.settings.Settings`, sees the stream the way the worker does:

1. events arrive in event-time order and wait in a per-task micro-batch (one agent per source
   topic), which closes at ``STREAM_BATCH_SIZE`` events, when the next event comes more than
   ``STREAM_MAX_WAIT_S`` after the batch opened (``take(n, within=t)``), or at a segment
   boundary (the end of a file or of a benchmark task);
2. a closed batch is predicted by the model as it is then: that prediction is what the user got;
3. every label known by then (inline labels at once, later ones when the stream's clock passes
   their ``label_ts``) is released: its event's served prediction is scored
   (**delayed-prequential accuracy**, Grzenda, Gomes & Bifet 2020: the prediction served on
   arrival against the label that came later, not a re-prediction), then the released events
   train the learner in micro-batches, less the trainer's probe hold-outs
   (``lifecycle.probes.ProbeSets``) and repeated texts (``streams.dedup``);
4. every ``METRICS_PROBE_EVERY_UPDATES`` updates the probe sets are scored: forgetting = the
   best accuracy a probe set had minus its current one, as the trainer reports it.

With labels inside their events this is exactly predict-then-learn per batch, the worker's
order, and it reproduces ``bench continual``'s numbers for the same settings
(tests/tuning/test_replay.py).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import torch

    from learner.learner import Learner
    from streamlearner.settings import Settings

    from .stream import StreamEvent

__all__ = ["ReplayResult", "build_learner", "encode_features", "replay"]


@dataclass
class ReplayResult:
    """What one replay measured. ``scored`` holds ``(event index, correct)`` per labeled
    event in the order its label arrived."""

    events: int = 0
    labeled: int = 0
    correct: int = 0
    trained: int = 0
    held_out: int = 0          # probe hold-outs (scored, never trained)
    repeats: int = 0           # repeated texts (scored, not trained again)
    updates: int = 0
    skipped_updates: int = 0
    per_task: dict = field(default_factory=dict)        # task -> [correct, labeled]
    forgetting: dict = field(default_factory=dict)      # task -> final probe forgetting
    max_forgetting: dict = field(default_factory=dict)  # task -> the largest seen
    probe_accuracy: dict = field(default_factory=dict)  # task -> last probe accuracy
    scored: list = field(default_factory=list)
    curve: list = field(default_factory=list)           # [(events seen, accuracy so far)]
    evaluations: dict = field(default_factory=dict)     # segment -> on_segment_end's value
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        """Delayed-prequential accuracy over every labeled event (nan when none)."""
        return self.correct / self.labeled if self.labeled else math.nan

    def accuracy_between(self, start: int, end: int | None = None) -> float:
        """Delayed-prequential accuracy of the labeled events with index in [start, end)."""
        hits = [ok for i, ok in self.scored if i >= start and (end is None or i < end)]
        return sum(hits) / len(hits) if hits else math.nan

    @property
    def mean_forgetting(self) -> float:
        """Mean over tasks of the final probe forgetting (0 without probes)."""
        return sum(self.forgetting.values()) / len(self.forgetting) if self.forgetting else 0.0

    def summary(self) -> dict:
        return {"events": self.events, "labeled": self.labeled, "accuracy": self.accuracy,
                "trained": self.trained, "held_out": self.held_out, "repeats": self.repeats,
                "updates": self.updates, "skipped_updates": self.skipped_updates,
                "accuracy_per_task": {t: c / n for t, (c, n) in self.per_task.items() if n},
                "forgetting": dict(self.forgetting), "mean_forgetting": self.mean_forgetting,
                "max_forgetting": dict(self.max_forgetting),
                "probe_accuracy": dict(self.probe_accuracy),
                "evaluations": dict(self.evaluations), "seconds": round(self.seconds, 2)}


def build_learner(settings: "Settings", features: "Mapping[str, torch.Tensor] | None" = None) -> "Learner":
    """The worker's learner for ``settings``; ``features`` (text -> (H,) tensor) pinned in
    head mode so that no trial encodes a text twice."""
    from learner.learner import Learner

    learner = Learner(settings.learner, settings.memory)
    if features and settings.learner.frozen:
        import torch

        texts = list(features)
        learner.pin_features(texts, torch.stack([features[t] for t in texts]))
    return learner


def replay(settings: "Settings", events: Sequence["StreamEvent"], *,
           features: "Mapping[str, torch.Tensor] | None" = None,
           learner: "Learner | None" = None,
           progress: Callable[[int, float], None] | None = None, progress_every: int = 0,
           on_segment_end: Callable[[str, "Learner"], object] | None = None) -> ReplayResult:
    """Replay ``events`` (sorted by ``ts``) through a fresh learner for ``settings``.

    ``progress(events_seen, accuracy_so_far)`` is called every ``progress_every`` events
    (Optuna's intermediate reports; it may raise to stop the replay). ``on_segment_end(name,
    learner)`` runs when a segment ends, after its batches were served and trained; its
    value is kept in ``result.evaluations[name]``.
    """
    import torch

    learner = learner if learner is not None else build_learner(settings, features)
    threads = torch.get_num_threads()
    if learner.config.frozen and learner.device.type == "cpu":
        # Head mode is tiny matmuls on cached features: thread hand-offs cost more than they
        # save, badly so on busy cores (bench continual does the same).
        torch.set_num_threads(1)
    try:
        return _replay(settings, events, learner, progress, progress_every, on_segment_end)
    finally:
        torch.set_num_threads(threads)


def _replay(settings, events, learner, progress, progress_every, on_segment_end) -> ReplayResult:
    from lifecycle.probes import ProbeSets
    from streams.dedup import Deduplicator

    started = time.perf_counter()
    stream, metrics = settings.stream, settings.metrics
    size, wait = stream.batch_size, stream.max_wait_s
    probes = ProbeSets(size=metrics.probe_size, every=metrics.probe_every)
    dedup = Deduplicator(id_capacity=max(1, len(events)), text_window=stream.dedup_text_window)
    result = ReplayResult()
    buffers: dict[str, list[int]] = {}      # task -> indices of the open micro-batch
    opened: dict[str, float] = {}
    served: dict[int, str | None] = {}      # event index -> the label it was served
    pending: list[tuple[float, int]] = []   # heap of (label_ts, event index)
    since_probe = 0

    def close(task: str) -> None:
        nonlocal since_probe
        batch = buffers.pop(task, [])
        opened.pop(task, None)
        if not batch:
            return
        preds = learner.predict_many(task, [events[i].text for i in batch])
        for i, p in zip(batch, preds):
            served[i] = p.label
            if events[i].label is not None:
                heapq.heappush(pending, (events[i].label_ts, i))
        since_probe = release(events[batch[-1]].ts, since_probe)

    def release(now: float, since: int) -> int:
        due: dict[str, list[int]] = {}
        while pending and pending[0][0] <= now:
            _, i = heapq.heappop(pending)
            due.setdefault(events[i].task, []).append(i)
        for task, items in due.items():
            train = []
            for i in items:
                e = events[i]
                ok = served.pop(i) == e.label
                result.labeled += 1
                result.correct += ok
                result.scored.append((i, ok))
                counts = result.per_task.setdefault(task, [0, 0])
                counts[0] += ok
                counts[1] += 1
                if dedup.repeat_text(task, e.text):
                    result.repeats += 1
                elif probes.take(task, e.id, e.text, e.label):
                    result.held_out += 1
                else:
                    train.append(e)
            for s in range(0, len(train), size):
                chunk = train[s : s + size]
                before = learner.model_version
                stats = learner.learn_many(task, [e.text for e in chunk], [e.label for e in chunk])
                if stats.model_version == before:
                    result.skipped_updates += 1
                    continue
                result.updates += 1
                result.trained += len(chunk)
                since += 1
                if since >= metrics.probe_every_updates:
                    since = 0
                    score_probes()
        return since

    def score_probes() -> None:
        accuracy = probes.evaluate(learner)
        for task, forgetting in probes.record(accuracy).items():
            result.probe_accuracy[task] = accuracy[task]
            result.forgetting[task] = forgetting
            result.max_forgetting[task] = max(result.max_forgetting.get(task, 0.0), forgetting)

    def end_segment(name: str | None) -> None:
        for task in list(buffers):
            close(task)
        if on_segment_end is not None and name is not None:
            result.evaluations[name] = on_segment_end(name, learner)

    segment = events[0].segment if events else None
    for n, e in enumerate(events):
        if e.segment != segment:
            end_segment(segment)
            segment = e.segment
        for task in [t for t, ts in opened.items() if e.ts - ts > wait]:
            close(task)
        buffers.setdefault(e.task, []).append(n)
        opened.setdefault(e.task, e.ts)
        if len(buffers[e.task]) >= size:
            close(e.task)
        result.events = n + 1
        if progress is not None and progress_every > 0 and (n + 1) % progress_every == 0:
            progress(n + 1, result.accuracy)
    for task in list(buffers):
        close(task)
    since_probe = release(math.inf, since_probe)   # the labels still to come, at the end
    if on_segment_end is not None and segment is not None:
        result.evaluations[segment] = on_segment_end(segment, learner)
    if probes.sizes():
        score_probes()
    result.curve = _curve(result.scored, len(events))
    result.seconds = time.perf_counter() - started
    return result


def _curve(scored: list, n: int, points: int = 50) -> list[tuple[int, float]]:
    """Cumulative delayed-prequential accuracy at up to ``points`` evenly spaced positions."""
    if not scored:
        return []
    step = max(1, len(scored) // points)
    out, hits = [], 0
    for k, (_, ok) in enumerate(scored, 1):
        hits += ok
        if k % step == 0 or k == len(scored):
            out.append((k, hits / k))
    return out


def encode_features(settings: "Settings", texts: Sequence[str], cache: str | None = None) -> dict:
    """Frozen-encoder features of ``texts`` (text -> (H,) CPU tensor), encoded once with the
    encoder ``settings`` name; ``cache`` (a safetensors file) keeps them between runs."""
    from learner.features import encode_once

    lc = settings.learner
    return encode_once(texts, model=lc.model, device=lc.device, max_length=lc.max_length,
                       cache=cache)
