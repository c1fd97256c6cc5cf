"""A recorded stream of unlabeled events and later labels, and a way to feed it to a store."""

from __future__ import annotations

import math
import random

from lifecycle.join import PendingEvent, PendingStore
from lifecycle.labels import Label

TASK = "feedback"


def recorded_stream(n: int = 300, seed: int = 0, mean_delay: float = 20.0, unknown: int = 10):
    """``(events, labels)``, each sorted by ts. Labels carry a unique ``payload`` so that a
    test can follow each one: most come after their event (exponential delay), some before
    it (within and beyond a 10 s wait), some twice, some corrected, some for unknown ids."""
    rng = random.Random(seed)
    events = [PendingEvent(f"e{i}", TASK, f"text number {i}", float(i), predicted=f"c{i % 3}",
                           confidence=0.5, model_version=i // 16) for i in range(n)]
    labels = []

    def add(i, y, ts):
        labels.append(Label(f"e{i}" if i is not None else f"ghost{len(labels)}", y, TASK,
                            round(ts, 3), f"L{len(labels)}"))

    for i in range(n):
        y = f"c{rng.randrange(3)}"
        r = rng.random()
        if r < 0.08:
            add(i, y, i - rng.uniform(0.0, 8.0))           # before its event, within the wait
        elif r < 0.10:
            add(i, y, i - rng.uniform(12.0, 20.0))         # before its event, beyond the wait
        elif r < 0.95:
            add(i, y, i + rng.expovariate(1.0 / mean_delay))
        if r < 0.95 and rng.random() < 0.06:
            add(i, y, i + rng.uniform(0.0, 90.0))          # the same label again
        if r < 0.95 and rng.random() < 0.04:
            add(i, "c9", i + rng.uniform(0.0, 90.0))       # a correction
    for k in range(unknown):
        add(None, "c0", rng.uniform(0, n))
    labels.sort(key=lambda lab: lab.ts)
    return events, labels


def merged(events, labels):
    """One record list in ts order (an event before a label of the same ts)."""
    records = [(e.ts, 0, k, "E", e) for k, e in enumerate(events)]
    records += [(lab.ts, 1, k, "L", lab) for k, lab in enumerate(labels)]
    return [(kind, rec) for *_, kind, rec in sorted(records)]


def interleavings(events, labels, seed: int):
    """The two sources consumed at random relative speeds (each in its own order)."""
    rng = random.Random(seed)
    out, i, j = [], 0, 0
    while i < len(events) or j < len(labels):
        burst = rng.randrange(1, 40)
        if j >= len(labels) or (i < len(events) and rng.random() < 0.5):
            out += [("E", e) for e in events[i:i + burst]]
            i += burst
        else:
            out += [("L", lab) for lab in labels[j:j + burst]]
            j += burst
    return out


def feed(store: PendingStore, records, *, finish: bool = True, take_every: int = 1):
    """Feed ``records``, taking what is ready every ``take_every`` records; returns (final
    outcomes per label payload, joined items in order). ``finish=False`` leaves the store as
    it is after the last record (ready items and expired labels not taken)."""
    outcomes: dict[str, list[str]] = {}
    joined = []

    def note(result):
        if result.outcome.final:
            outcomes.setdefault(result.label.payload, []).append(result.outcome.value)

    for k, (kind, rec) in enumerate(records, 1):
        if kind == "E":
            for result in store.add_event(rec):
                note(result)
        else:
            note(store.add_label(rec))
        if k % take_every == 0:
            joined += store.take_ready()
            for result in store.take_expired():
                note(result)
    if finish:   # the end of the replay: settle everything
        store.advance(math.inf)
        joined += store.take_ready()
        for result in store.take_expired():
            note(result)
    return outcomes, joined
