"""Event time of the label join: a watermark over two sources (events and labels).

Each source's watermark is the largest ts it has shown less ``lateness_s``; the join's
watermark is the smaller of the two (a source not seen yet holds it at -inf), never below a
floor the caller may raise (:meth:`Watermark.advance`). Taking the smaller one is what
makes the join independent of how the two topics interleave: nothing is evicted for a
label until the labels themselves have moved past it, however far ahead the events are.

A ts more than ``max_ts_jump_s`` ahead of its source's largest does not move it until
three records in a row confirm the jump: one producer with a clock years ahead must not
evict the whole store, while a real gap in the stream costs two records of delay.

>>> w = Watermark(lateness_s=5, max_ts_jump_s=100)
>>> w.observe("events", 50.0); w.value        # labels not seen yet
-inf
>>> w.observe("labels", 40.0); w.value
35.0
>>> w.observe("labels", 1e9); w.value, w.jumps  # one bad clock: ignored
(35.0, 1)
"""

from __future__ import annotations

import math

__all__ = ["SOURCES", "Watermark"]

SOURCES = ("events", "labels")
JUMP_CONFIRM = 3
_NEG_INF = -math.inf


class Watermark:
    def __init__(self, lateness_s: float = 0.0, max_ts_jump_s: float = 0.0) -> None:
        self.lateness_s = float(lateness_s)
        self.max_ts_jump_s = float(max_ts_jump_s)
        self._reset()

    def _reset(self) -> None:
        self.top = {s: _NEG_INF for s in SOURCES}      # largest ts accepted per source
        self.runs: dict[str, list[float]] = {s: [] for s in SOURCES}  # unconfirmed jumps
        self.floor = _NEG_INF
        self.jumps = 0                                   # records that did not move it

    @property
    def value(self) -> float:
        return max(self.floor, min(self.top.values()) - self.lateness_s)

    def observe(self, source: str, ts: float) -> None:
        top, jump = self.top[source], self.max_ts_jump_s
        if top == _NEG_INF or jump == 0 or ts <= top + jump:
            if ts > top:
                self.top[source] = ts
            self.runs[source] = []
            return
        self.jumps += 1
        run = self.runs[source]
        run.append(ts)
        if len(run) >= JUMP_CONFIRM:
            self.top[source] = min(run)
            self.runs[source] = []

    def advance(self, floor: float) -> None:
        self.floor = max(self.floor, float(floor))

    def state(self) -> dict:
        return {"top": {s: _num(v) for s, v in self.top.items()}, "floor": _num(self.floor),
                "runs": {s: list(v) for s, v in self.runs.items()}, "jumps": self.jumps}

    def load(self, state: dict) -> None:
        self.top = {s: float(state["top"][s]) for s in SOURCES}
        self.floor = float(state["floor"])
        self.runs = {s: [float(x) for x in state["runs"][s]] for s in SOURCES}
        self.jumps = int(state["jumps"])


def _num(x: float) -> float | str:
    """JSON has no infinities: 'inf' / '-inf' (float() reads them back)."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
