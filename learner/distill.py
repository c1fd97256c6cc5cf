"""Distil the continually learning teacher into a smaller, faster student.

The student is the teacher's own encoder cut to its first ``layers`` transformer layers
(embeddings and those layers copied, same width), with the teacher's heads copied too,
so it starts close to the teacher. It is then trained on texts the teacher has seen —
the replay memory plus recent stream text, labeled or not — to match the teacher's
softened class distribution (Hinton et al. 2015: KL at temperature T, scaled by T²),
plus cross-entropy on the label where one is known. The result is an ordinary
:class:`~learner.learner.Learner` checkpoint, so the worker can serve it
(``SERVE_MODEL=student``) while the teacher keeps learning.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from learner.learner import Learner

STUDENT_ENCODER_DIR = "encoder"
STUDENT_CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class DistillConfig:
    layers: int = 1
    epochs: int = 3
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.5        # weight of the hard-label loss where a label is known
    lr: float = 1e-4
    head_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ValueError("lr must be > 0 (and head_lr)")


@dataclass(frozen=True)
class Sample:
    task: str
    text: str
    label: str | None = None


def make_student(teacher: "Learner", out_dir: str | Path, layers: int = 1) -> "Learner":
    """A Learner whose encoder is the teacher's first ``layers`` layers, saved under
    ``out_dir/encoder`` (with the tokenizer), with the teacher's heads and labels."""
    from transformers import AutoModel

    from learner.config import MemoryConfig
    from learner.learner import Learner

    t_encoder = teacher.model.encoder
    if any("lora_" in name for name, _ in t_encoder.named_parameters()):
        # LoRA adapters injected in place: fold B·A into the base weights of a copy, so the
        # student starts from what the teacher computes, under plain BERT weight names.
        t_encoder = copy.deepcopy(t_encoder)
        for module in t_encoder.modules():
            if hasattr(module, "base_layer") and hasattr(module, "merge"):
                module.merge()
    teacher_state = {k.replace(".base_layer.", "."): v for k, v in t_encoder.state_dict().items()
                     if "lora_" not in k}
    total = t_encoder.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be in 1..{total}, got {layers}")
    config = copy.deepcopy(t_encoder.config)
    config.num_hidden_layers = layers
    encoder = AutoModel.from_config(config)
    missing, _ = encoder.load_state_dict(
        {k: v for k, v in teacher_state.items() if k in encoder.state_dict()}, strict=False)
    if missing:
        raise RuntimeError(f"student weights not found in the teacher: {missing[:5]}")
    encoder_dir = Path(out_dir) / STUDENT_ENCODER_DIR
    encoder_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(encoder_dir)
    teacher.model.tokenizer.save_pretrained(encoder_dir)

    student_config = _serving_config(teacher.config, encoder_dir)
    # A student serves; it does not replay, so its own memory stays empty.
    student = Learner(student_config, MemoryConfig(capacity=1))
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {k: v for k, v in teacher.state_dict().items() if k.startswith("head.")}
    meta = teacher.metadata()
    meta = {**meta, "config": asdict(student_config), "mode": "full", "strategies": {}}
    student.load(state, meta, student.replay.state_dict())
    return student


def _serving_config(config, encoder_dir: Path):
    """The student trains its whole (small) encoder and carries no continual strategy."""
    fields = {"model": str(encoder_dir)}
    if hasattr(config, "mode"):
        fields["mode"] = "full"
    if hasattr(config, "freeze_encoder"):
        fields["freeze_encoder"] = False
    if hasattr(config, "strategy"):
        fields["strategy"] = "naive"
    if hasattr(config, "adv_epsilon"):
        fields["adv_epsilon"] = 0.0
    return replace(config, **fields)


def _teacher_logits(teacher: "Learner", samples: Sequence[Sample], batch_size: int) -> list[torch.Tensor]:
    model = teacher.model
    model.eval()
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            feats = model.encode([s.text for s in chunk])                      # (B, H)
            for s, f in zip(chunk, feats):
                out.append(model.head(s.task)(f[None]).float()[0].cpu())       # (N,)
    return out


def distill(teacher: "Learner", student: "Learner", samples: Iterable[Sample],
            config: DistillConfig | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train ``student`` to match ``teacher`` on ``samples``; returns loss/time stats."""
    cfg = config or DistillConfig()
    data = [s for s in samples if s.text and teacher.labels(s.task)]
    if not data:
        raise ValueError("no samples of a task the teacher knows: nothing to distil")
    started = time.perf_counter()
    targets = _teacher_logits(teacher, data, cfg.batch_size)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = student.model
    params_enc = [p for p in model.encoder.parameters()]
    params_head = [p for p in model.heads.parameters()]
    for p in params_enc + params_head:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": params_enc, "lr": cfg.lr},
                             {"params": params_head, "lr": cfg.head_lr}], weight_decay=0.01)
    by_task: dict[str, list[int]] = {}
    for i, s in enumerate(data):
        by_task.setdefault(s.task, []).append(i)
    T = cfg.temperature
    steps, losses = 0, []
    total_steps = cfg.epochs * sum(math.ceil(len(v) / cfg.batch_size) for v in by_task.values())
    model.train()
    for _ in range(cfg.epochs):
        batches = []
        for task, idx in by_task.items():
            idx = idx[:]
            rng.shuffle(idx)
            batches += [(task, idx[i:i + cfg.batch_size]) for i in range(0, len(idx), cfg.batch_size)]
        rng.shuffle(batches)
        for task, idx in batches:
            feats = model.encode([data[i].text for i in idx])                    # (B, H)
            logits = model.head(task)(feats).float()                             # (B, N)
            teacher_logits = torch.stack([targets[i] for i in idx]).to(logits.device)  # (B, N)
            loss = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(teacher_logits / T, -1),
                            reduction="batchmean") * T * T
            labels = student.labels(task)
            hard = [(j, labels.index(data[i].label)) for j, i in enumerate(idx)
                    if data[i].label in labels]
            if hard and cfg.alpha > 0:
                rows = torch.tensor([j for j, _ in hard], device=logits.device)
                ys = torch.tensor([y for _, y in hard], device=logits.device)
                loss = (1 - cfg.alpha) * loss + cfg.alpha * F.cross_entropy(logits[rows], ys)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_enc + params_head, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            losses.append(loss.item())
            if progress:
                progress(steps, total_steps, losses[-1])
    model.eval()
    return {"samples": len(data), "steps": steps, "epochs": cfg.epochs,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "seconds": time.perf_counter() - started, "config": asdict(cfg)}


def save_student(student: "Learner", out_dir: str | Path, *, teacher_version: int,
                 stats: dict | None = None, keep_last: int = 3) -> Path:
    """Atomic checkpoint under ``out_dir/checkpoints``; the worker hot-swaps to it."""
    from learner.checkpoints import CheckpointManager

    manager = CheckpointManager(Path(out_dir) / STUDENT_CHECKPOINTS_DIR, keep_last=keep_last)
    return manager.save(student, extra={"kind": "student", "teacher_version": teacher_version,
                                        "distill": json.loads(json.dumps(stats or {}, default=str))})


def load_student(out_dir: str | Path, learner_config=None) -> "Learner | None":
    """The newest good student under ``out_dir`` (None when there is none)."""
    from learner.checkpoints import CheckpointManager
    from learner.config import LearnerConfig, MemoryConfig
    from learner.learner import Learner

    out = Path(out_dir)
    manager = CheckpointManager(out / STUDENT_CHECKPOINTS_DIR)
    if manager.latest() is None:
        return None
    config = _serving_config(learner_config or LearnerConfig(), out / STUDENT_ENCODER_DIR)
    student = Learner(config, MemoryConfig(capacity=1))
    manager.load_latest(student)
    return student
