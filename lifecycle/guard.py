"""Stability guard (champion / challenger) on the per-task probe sets. Free of Faust.

Every ``METRICS_PROBE_EVERY_UPDATES`` updates the pipeline evaluates the live model (the
challenger) on the probe sets (streams/probe.py: labeled events held out of training) and
asks :meth:`StabilityGuard.judge`:

* a task is *judged* once its probe set holds ``GUARD_MIN_PROBE`` events and is the same
  set the champion was measured on (a set still filling is not comparable);
* ``rollback`` when a judged task's probe accuracy is more than ``GUARD_MARGIN`` below the
  champion's: the pipeline loads the champion checkpoint, announces it, counts it;
* ``promote`` when no judged task lost more than half the margin: the live model becomes
  the champion (saved to ``<CHECKPOINT_DIR>/champion``, survives restarts);
* ``hold`` in between: keep serving, keep the old champion, judge again next time.

A genuine concept change makes the old probes wrong; then the guard keeps rolling back
(each one counted and announced) until an operator resets the probe sets
(``POST /admin/reset-probes``), after which fresh probes are drawn from the new stream.

>>> g = StabilityGuard(margin=0.1, min_probe=2)
>>> g.judge({"feedback": 0.9}, {"feedback": 2}).action   # no champion yet
'promote'
>>> g.accept(7, {"feedback": 0.9}, {"feedback": 2})
>>> g.judge({"feedback": 0.7}, {"feedback": 2}).action
'rollback'
>>> g.judge({"feedback": 0.86}, {"feedback": 2}).action
'promote'
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StabilityGuard", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    action: str                      # promote | hold | rollback | skip
    task: str | None = None          # the task that decided a rollback or hold
    drop: float = 0.0                # champion accuracy minus current, for that task
    accuracy: dict = field(default_factory=dict)
    champion: dict = field(default_factory=dict)
    champion_version: int | None = None


class StabilityGuard:
    """Decisions only; the pipeline saves, loads and announces on the model thread."""

    def __init__(self, margin: float = 0.10, min_probe: int = 20) -> None:
        self.margin = margin
        self.min_probe = min_probe
        self._reset()

    def _reset(self) -> None:
        self.version: int | None = None       # champion model version
        self.accuracy: dict[str, float] = {}  # champion probe accuracy per task
        self.sizes: dict[str, int] = {}       # probe-set sizes it was measured on

    def judge(self, accuracy: dict[str, float], sizes: dict[str, int]) -> Verdict:
        """Compare the live model's probe accuracy with the champion's."""
        ready = {t: a for t, a in accuracy.items() if sizes.get(t, 0) >= self.min_probe}
        if not ready:
            return Verdict("skip", accuracy=dict(accuracy))
        worst_task, worst_drop = None, float("-inf")
        for task, acc in ready.items():
            if task in self.accuracy and self.sizes.get(task) == sizes.get(task):
                drop = self.accuracy[task] - acc
                if drop > worst_drop:
                    worst_task, worst_drop = task, drop
        base = dict(accuracy=dict(accuracy), champion=dict(self.accuracy),
                    champion_version=self.version)
        if worst_task is None:   # nothing comparable yet: the live model is the reference
            return Verdict("promote", **base)
        if worst_drop > self.margin:
            return Verdict("rollback", worst_task, worst_drop, **base)
        if worst_drop > self.margin / 2:
            return Verdict("hold", worst_task, worst_drop, **base)
        return Verdict("promote", worst_task, worst_drop, **base)

    def accept(self, version: int, accuracy: dict[str, float], sizes: dict[str, int]) -> None:
        """The live model at ``version`` is the new champion (call after saving it)."""
        self.version = int(version)
        self.accuracy = {t: float(a) for t, a in accuracy.items()
                         if sizes.get(t, 0) >= self.min_probe}
        self.sizes = {t: int(sizes[t]) for t in self.accuracy}

    def forget(self, task: str | None = None) -> None:
        """Stop judging ``task`` (all tasks when None) until it is measured again."""
        if task is None:
            self.accuracy.clear()
            self.sizes.clear()
        else:
            self.accuracy.pop(task, None)
            self.sizes.pop(task, None)

    def state_dict(self) -> dict:
        return {"version": self.version, "accuracy": dict(self.accuracy), "sizes": dict(self.sizes)}

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        version = state.get("version")
        self.version = int(version) if isinstance(version, int) else None
        self.accuracy = {str(t): float(a) for t, a in dict(state.get("accuracy", {})).items()}
        self.sizes = {str(t): int(n) for t, n in dict(state.get("sizes", {})).items()
                      if t in self.accuracy}
