"""What answers predictions: the live learner ("teacher") or the newest distilled student.

With ``serve="student"`` the newest good checkpoint under the student directory is
loaded at start and swapped in whenever :meth:`ServingModel.maybe_reload` finds a newer
one (the worker polls it on the model thread, so a swap happens between two jobs and
never under an in-flight request). Until a student exists, the teacher answers.
Every answer carries the version that produced it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from learner.learner import Learner, Prediction

log = logging.getLogger(__name__)

SERVE_CHOICES = ("teacher", "student")


def predict_proba(learner: "Learner", task: str, texts: Sequence[str],
                  chunk: int = 256) -> list[dict[str, float]]:
    """Full class distribution per text ({} when the task has no label yet)."""
    labels = learner.labels(task)
    if not labels:
        return [{} for _ in texts]
    model = learner.model
    head = model.head(task)
    was_training = model.training
    model.eval()
    out: list[dict[str, float]] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(texts), chunk):
                probs = head(model.encode(list(texts[i:i + chunk]))).float().softmax(-1)  # (B, N)
                out.extend(dict(zip(labels, row)) for row in probs.tolist())
    finally:
        model.train(was_training)
    return out


class ServingModel:
    def __init__(self, learner: "Learner", *, serve: str = "teacher",
                 student_dir: str | Path | None = None):
        if serve not in SERVE_CHOICES:
            raise ValueError(f"serve must be one of {SERVE_CHOICES}, got {serve!r}")
        if serve == "student" and student_dir is None:
            raise ValueError("serve='student' needs student_dir")
        self.learner = learner
        self.serve = serve
        self.student_dir = Path(student_dir) if student_dir else None
        self.student: "Learner | None" = None
        self._student_path: Path | None = None
        self.swaps = 0

    @property
    def current(self) -> "Learner":
        return self.student if self.student is not None else self.learner

    @property
    def name(self) -> str:
        return "student" if self.student is not None else "teacher"

    @property
    def model_version(self) -> int:
        return self.current.model_version

    def model_for(self, task: str) -> "Learner":
        """The model that answers for ``task``: the student, unless the task was born after
        the student was distilled (then the teacher, which knows it)."""
        if self.student is not None and not self.student.labels(task) and self.learner.labels(task):
            return self.learner
        return self.current

    def name_for(self, task: str) -> str:
        return "student" if self.model_for(task) is self.student else "teacher"

    def predict_many(self, task: str, texts: Sequence[str]) -> list["Prediction"]:
        return self.model_for(task).predict_many(task, texts)

    def predict_proba(self, task: str, texts: Sequence[str]) -> list[dict[str, float]]:
        return predict_proba(self.model_for(task), task, texts)

    def maybe_reload(self) -> bool:
        """Load the newest student checkpoint if it changed; True when a swap happened."""
        if self.serve != "student" or self.student_dir is None:
            return False
        from learner.checkpoints import CheckpointManager
        from learner.distill import STUDENT_CHECKPOINTS_DIR, load_student

        newest = CheckpointManager(self.student_dir / STUDENT_CHECKPOINTS_DIR).latest()
        if newest is None or newest == self._student_path:
            return False
        try:
            student = load_student(self.student_dir, self.learner.config)
        except Exception:  # a bad student must never take serving down
            log.exception("could not load student from %s; still serving %s",
                          self.student_dir, self.name)
            return False
        if student is None:
            return False
        self.student, self._student_path = student, newest
        self.swaps += 1
        log.info("serving student %s (model version %d)", newest.name, student.model_version)
        return True
