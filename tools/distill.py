"""``streamlearner distill``: distil the worker's newest checkpoint into a student.

Reads the teacher from ``CHECKPOINT_DIR`` (checkpoints are written atomically, so this
is safe while the worker runs), trains the student on the teacher's replay memory plus
any ``--texts`` files (.jsonl events or .csv, labeled or not: recent stream text), and
writes it under ``CHECKPOINT_DIR/student`` (or ``--out``). A worker started with
``SERVE_MODEL=student`` swaps to it without a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

log = logging.getLogger(__name__)


def read_texts(path: str, default_task: str) -> list:
    from learner.distill import Sample
    from streams.cleaning import clean_text
    from tools.publish import iter_payloads

    out = []
    for raw in iter_payloads(path):
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # the worker dead-letters such lines; nothing to learn from here
        if not isinstance(event, dict) or not isinstance(event.get("text"), str):
            continue
        text = clean_text(event["text"])
        label = event.get("label") if isinstance(event.get("label"), str) else None
        if text:
            out.append(Sample(event.get("task", default_task), text, label))
    return out


def run_distill(settings, *, texts: list[str], task: str, layers: int, epochs: int,
                out: str | None) -> Path:
    from tqdm import tqdm

    from learner.checkpoints import CheckpointManager
    from learner.distill import DistillConfig, Sample, distill, make_student, save_student
    from learner.learner import Learner

    manager = CheckpointManager(settings.checkpoint.dir)
    if manager.latest() is None:
        raise SystemExit(f"no checkpoint in {settings.checkpoint.dir}: run a worker first")
    teacher = Learner(settings.learner, settings.memory)
    manager.load_latest(teacher)
    out_dir = Path(out or Path(settings.checkpoint.dir) / "student")
    samples = [Sample(m.task, m.text, m.label) for m in teacher.replay.sample(len(teacher.replay))]
    for path in texts:
        samples += read_texts(path, task)
    print(f"teacher v{teacher.model_version}: {len(samples)} texts "
          f"({len(teacher.replay)} from replay memory)")
    student = make_student(teacher, out_dir, layers=layers)
    cfg = DistillConfig(layers=layers, epochs=epochs)
    with tqdm(desc="distil", unit="step") as bar:
        stats = distill(teacher, student, samples, cfg,
                        progress=lambda s, n, loss: (setattr(bar, "total", n), bar.update(1)))
    path = save_student(student, out_dir, teacher_version=teacher.model_version, stats=stats)
    print(f"student ({layers} layers) of teacher v{teacher.model_version} saved: {path}")
    return path
