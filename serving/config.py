"""Configuration of serving: which model answers, explanations, the admin token."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


PRECISIONS = ("auto", "fp32", "bf16")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class ServeConfig:
    """Which model answers predictions and the HTTP API, and stream explanations."""

    model: str = field(default="teacher", metadata=_help(
        "teacher (the live learner) or student (newest distilled student, hot-swapped; the "
        "teacher answers until one exists)."))
    student_dir: str | None = field(default=None, metadata=_help(
        "Where `streamlearner distill` writes students. Unset: CHECKPOINT_DIR/student."))
    reload_interval_s: float = field(default=5.0, metadata=_help(
        "How often the worker looks for a newer student."))
    explain_fraction: float = field(default=0.0, metadata=_help(
        "Fraction of stream predictions explained (IG) and published to the explanations "
        "topic; each costs model-thread time."))
    explain_method: str = field(default="ig", metadata=_help(
        "ig (Integrated Gradients) or gxi (gradient x input, faster)."))
    precision: str = field(default="auto", metadata=_help(
        "Number format of the serving copy's encoder on a CPU: fp32, bf16 (about 2x the batch "
        "throughput and 1.5x lower single-text latency on CPUs with native bf16, e.g. "
        "AVX512-BF16/AMX; features agree with fp32 to a cosine of 0.9999), or auto (bf16 where the CPU has "
        "native bf16, else fp32). Training always runs in fp32; GPUs use bf16 autocast."))
    trace: bool = field(default=True, metadata=_help(
        "Run the serving copy's encoder (head mode, CPU) as a TorchScript trace, checked "
        "against the eager encoder at start (falls back to eager if it disagrees): no Python "
        "between operations, about 1.4x the throughput and 1.4x lower latency measured."))
    lanes: int = field(default=0, metadata=_help(
        "Batches the all-in-one worker predicts side by side, each on a serving thread of its "
        "own with an equal share of the torch threads. 0: auto (one per torch thread on a "
        "CPU, so that a core taken by the event loop or the learner slows one batch, not "
        "all; 1 on a GPU). 1: one batch at a time, its sub-batches spread over the threads."))
    admin_token: str | None = field(default=None, metadata=_help(
        "Bearer token of the state-changing endpoints (POST /admin/*); unset: they answer "
        "403. Set it from a secret store, never on the command line (never logged)."))

    def __post_init__(self) -> None:
        if self.model not in ("teacher", "student"):
            raise ValueError(f"model must be 'teacher' or 'student', got {self.model!r}")
        if self.student_dir is not None and not self.student_dir.strip():
            raise ValueError("student_dir must not be blank")
        if not self.reload_interval_s > 0:
            raise ValueError(f"reload_interval_s must be > 0, got {self.reload_interval_s}")
        if not 0.0 <= self.explain_fraction <= 1.0:
            raise ValueError(f"explain_fraction must be in [0, 1], got {self.explain_fraction}")
        if self.explain_method not in ("ig", "gxi"):
            raise ValueError(f"explain_method must be 'ig' or 'gxi', got {self.explain_method!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if not isinstance(self.lanes, int) or self.lanes < 0:
            raise ValueError(f"lanes must be an integer >= 0 (0: auto), got {self.lanes!r}")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("admin_token must be at least 16 characters (got a shorter one)")

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if shown["admin_token"]:
            shown["admin_token"] = "***"
        return "ServeConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
