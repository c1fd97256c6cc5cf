"""The checkpoint folder layout: every name under ``CHECKPOINT_DIR``, in one place.

::

    CHECKPOINT_DIR/
        ckpt-000000001234/     the trainer's checkpoints (learner/checkpoints.py), newest K
        champion/ckpt-*        the stability guard's last good version
        pre-drift/ckpt-*       rollback points saved at drift detections
        discarded/ckpt-*       versions a rollback (or a lost lineage) moved out of the way
        student/               distilled students (``streamlearner distill``)
        journal.jsonl          event ids of every update in the model's history
        journal-discarded.jsonl  the lines a restore or rollback cut
        faust/                 the Faust app's data directory

>>> layout = CheckpointLayout("var/checkpoints")
>>> str(layout.champion), [kind for kind, _ in layout.kept()]
('var/checkpoints/champion', ['checkpoint', 'champion', 'pre-drift', 'discarded'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckpointLayout"]


@dataclass(frozen=True)
class CheckpointLayout:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> Path:
        return self.root

    @property
    def champion(self) -> Path:
        return self.root / "champion"

    @property
    def pre_drift(self) -> Path:
        return self.root / "pre-drift"

    @property
    def discarded(self) -> Path:
        return self.root / "discarded"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def labels(self) -> Path:
        """The label join's pending store (lifecycle/join_log.py), referenced by checkpoints."""
        return self.root / "labels"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    def faust_data(self, role: str = "worker") -> Path:
        return self.root / ("faust" if role == "worker" else f"faust-{role}")

    def kept(self) -> list[tuple[str, Path]]:
        """Where a version a rollback can go to may be kept, in search order."""
        return [("checkpoint", self.checkpoints), ("champion", self.champion),
                ("pre-drift", self.pre_drift), ("discarded", self.discarded)]
