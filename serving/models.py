"""What a serving process answers with: the current model version, and a distilled student.

:class:`ServedModels` holds the current :class:`~serving.snapshot.ModelSnapshot` (the newest
version the trainer published, or the co-located trainer's in the all-in-one worker) and,
with ``SERVE_MODEL=student``, the newest student from ``streamlearner distill`` (found every
``SERVE_RELOAD_INTERVAL_S``). A swap replaces a reference between two batches: a request or a
batch keeps the snapshot it started with. Versions only move forward in publication order,
except an announced rollback.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from serving.snapshot import ModelSnapshot

if TYPE_CHECKING:
    from learner.config import LearnerConfig

log = logging.getLogger(__name__)

SERVE_CHOICES = ("teacher", "student")


class ServedModels:
    def __init__(self, current: ModelSnapshot, *, serve: str = "teacher",
                 student_dir: str | Path | None = None,
                 learner_config: "LearnerConfig | None" = None, metrics=None) -> None:
        if serve not in SERVE_CHOICES:
            raise ValueError(f"serve must be one of {SERVE_CHOICES}, got {serve!r}")
        if serve == "student" and student_dir is None:
            raise ValueError("serve='student' needs student_dir")
        self.current = current
        self.serve = serve
        self.student_dir = Path(student_dir) if student_dir else None
        self.learner_config = learner_config
        self.student: ModelSnapshot | None = None
        self._student_path: Path | None = None
        self.sequence = -1          # publication order of the current version (-1: none yet)
        self.swaps = 0
        self.metrics = metrics

    @property
    def model_version(self) -> int:
        return self.current.model_version

    @property
    def name(self) -> str:
        return "student" if self.student is not None else "teacher"

    def model_for(self, task: str) -> ModelSnapshot:
        """The student, unless the task was born after it was distilled (then the teacher)."""
        if self.student is not None and (self.student.labels(task)
                                         or not self.current.labels(task)):
            return self.student
        return self.current

    def accepts(self, sequence: int, version: int, kind: str) -> str | None:
        """None when a published version may replace the current one, else why not."""
        if sequence <= self.sequence:
            return "stale"
        if kind != "rollback" and version < self.current.model_version:
            return "stale"
        return None

    def swap(self, snapshot: ModelSnapshot, *, sequence: int | None = None) -> None:
        """Serve ``snapshot`` from now on (call on the event loop, between two batches)."""
        self.current = snapshot
        if sequence is not None:
            self.sequence = sequence
        self.swaps += 1
        if self.metrics is not None:
            self.metrics.serve_model_version.set(snapshot.model_version)
            self.metrics.serve_swaps.inc()
            if snapshot.published_ts is not None:
                self.metrics.serve_staleness.observe(max(0.0, time.time() - snapshot.published_ts))

    def maybe_reload_student(self) -> bool:
        """Serving thread: load the newest student checkpoint if it changed; True on a swap."""
        if self.serve != "student" or self.student_dir is None:
            return False
        from learner.checkpoints import CheckpointManager
        from learner.distill import STUDENT_CHECKPOINTS_DIR, load_student

        newest = CheckpointManager(self.student_dir / STUDENT_CHECKPOINTS_DIR).latest()
        if newest is None or newest == self._student_path:
            return False
        try:
            learner = load_student(self.student_dir, self.learner_config)
        except Exception:   # a bad student must never take serving down
            log.exception("could not load student from %s; still serving %s",
                          self.student_dir, self.name)
            return False
        if learner is None:
            return False
        self.student = ModelSnapshot(learner.model, {t: learner.labels(t) for t in learner.tasks()},
                                     learner.model_version, mode="full", name="student")
        self._student_path = newest
        log.info("serving student %s (model version %d)", newest.name, learner.model_version)
        return True
