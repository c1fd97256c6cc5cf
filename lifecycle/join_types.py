"""The records of the label join (lifecycle/join.py): its settings, what goes in, what comes out.

Outcomes of a label (``Outcome``, a bounded metric label; every label gets exactly one
final outcome, so ``labels == sum(final outcomes) + labels still waiting``):

=================  ==========================================================  ===============
outcome            when                                                        dead letter
=================  ==========================================================  ===============
joined             its event is pending and ``-label_wait_s <= ts_label -      --
                   ts_event <= max_age_s``: queued for training once
early (waiting)    no event yet: waits up to ``label_wait_s`` of event time    --
duplicate          the event was trained with this very label already (its     --
                   latest, or one of the last 8 it was corrected from)
correction         the event was trained with another label: the policy        under
                   ``ignore`` counts it, ``retrain`` queues one more training  ``dead_letter``:
                   on the new label (the history keeps texts), ``dead_letter`` label_correction
                   dead-letters it
expired_event      its event was evicted (age, late, count, bytes) or is       label_expired
                   more than ``max_age_s`` older than the label
unmatched_label    waited ``label_wait_s`` (or the ``max_early`` cap made      label_unmatched
                   room) without its event; or its event came too long after
ambiguous          no ``task``, and the id is known in several tasks           label_ambiguous
not_allowed        no ``task``; the task found has a fixed label set without   label_not_allowed
                   this label
=================  ==========================================================  ===============

Correction policies (``JoinConfig.correction``, a second label differing from the one an
event was trained with -- a label redelivered after a crash is the same label, a duplicate):
``ignore`` (default) counts it; ``retrain`` trains once more on the new label (the old one
stays in the model and the replay memory: learning cannot be undone) and remembers the new
one, so the history keeps each settled text; ``dead_letter`` sends it to the dead letters
(``label_correction``) for an operator. Two labels that both arrive before their event are
handled the same way once it comes: the first joins, the second is a duplicate or a
correction -- so the outcome does not depend on which came first, the event or the labels.

>>> JoinConfig(max_age_s=0)
Traceback (most recent call last):
...
ValueError: max_age_s must be a finite number > 0, got 0
>>> Outcome.joined.final, Outcome.early.final
(True, False)
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field

from .labels import Label

__all__ = ["CORRECTION_POLICIES", "EVICTION_CAUSES", "JoinConfig", "Joined", "LabelResult",
           "Outcome", "PendingEvent"]

CORRECTION_POLICIES = ("ignore", "retrain", "dead_letter")
# Why an unlabeled event left the pending store before a label found it: its event time fell
# out of the window (age), it arrived already out of it (late), or a cap made room (count, bytes).
EVICTION_CAUSES = ("age", "late", "count", "bytes")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class JoinConfig:
    """Bounds and policy of the pending store; each field is a setting ``LABELS_<FIELD>``.

    All durations are in *event time* (the records' ``ts``), never wall time."""

    enabled: bool = field(default=True, metadata=_help(
        "Join labels from KAFKA_LABELS_TOPIC to earlier events where the model learns (worker, "
        "train). Off: the labels topic is not read and unlabeled events are not kept."))
    max_age_s: float = field(default=86_400.0, metadata=_help(
        "How long (event time) an unlabeled event waits for its label: a label joins when its "
        "ts is at most this after the event's. Older events are evicted (counted, cause age)."))
    max_events: int = field(default=100_000, metadata=_help(
        "Most unlabeled events held; beyond it the oldest go (counted, cause count)."))
    max_bytes: int = field(default=64 * 1024 * 1024, metadata=_help(
        "Most bytes of unlabeled events held (text, id, task, served label + 64 per event); "
        "beyond it the oldest go (counted, cause bytes). Resident memory is about 3x this."))
    label_wait_s: float = field(default=3_600.0, metadata=_help(
        "How long (event time) a label that came before its event waits: it joins an event "
        "whose ts is at most this after its own; then it is dead-lettered (label_unmatched)."))
    max_early: int = field(default=10_000, metadata=_help(
        "Most labels waiting for their event; beyond it the oldest is dead-lettered "
        "(label_unmatched)."))
    lateness_s: float = field(default=60.0, metadata=_help(
        "Out-of-order allowance: each source's watermark trails its largest ts by this much. "
        "A record older than its source's watermark by more is late (treated by its own ts, "
        "but what it would have joined may already be gone)."))
    max_ts_jump_s: float = field(default=86_400.0, metadata=_help(
        "A record whose ts is more than this ahead of its source's largest ts does not move "
        "the watermark until 3 such records in a row confirm the jump (one bad producer clock "
        "must not flush the store). 0 disables the guard."))
    history: int = field(default=100_000, metadata=_help(
        "Settled event ids remembered (joined or evicted): a later label for one is a "
        "duplicate, a correction or expired_event instead of waiting as an early label."))
    correction: str = field(default="ignore", metadata=_help(
        "A second, different label for a trained event: ignore (count it), retrain (train on "
        "the new label once more; the history then keeps the texts) or dead_letter "
        "(label_correction)."))

    def __post_init__(self) -> None:
        for name in ("max_age_s", "label_wait_s"):
            _check_float(name, getattr(self, name), strict=True)
        for name in ("lateness_s", "max_ts_jump_s"):
            _check_float(name, getattr(self, name), strict=False)
        for name in ("max_events", "max_early", "history"):
            _check_int(name, getattr(self, name), 1)
        _check_int("max_bytes", self.max_bytes, 1024)
        if self.correction not in CORRECTION_POLICIES:
            raise ValueError(f"correction must be one of {', '.join(CORRECTION_POLICIES)}, "
                             f"got {self.correction!r}")

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: object, *, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if strict else value < 0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, "
                         f"got {value!r}")


class Outcome(str, enum.Enum):
    """What became of one label (a metric label value). Every label gets exactly one final
    outcome; ``early`` is the state of a label waiting for its event (it ends as joined,
    duplicate, correction, unmatched_label or not_allowed)."""

    joined = "joined"                   # trained once (queued in take_ready)
    early = "early"                     # waiting for its event (not final)
    duplicate = "duplicate"             # same label again for a joined event: nothing to do
    correction = "correction"           # a different label for a joined event: the policy
    expired_event = "expired_event"     # its event was evicted (or is out of the window)
    unmatched_label = "unmatched_label"  # no event within label_wait_s: dead letter
    ambiguous = "ambiguous"             # no task, and the id is known in several tasks
    not_allowed = "not_allowed"         # no task; the event's task's label set excludes it

    @property
    def final(self) -> bool:
        return self is not Outcome.early


# Dead-letter reason per outcome (None: not dead-lettered). Corrections are dead-lettered
# only under the dead_letter policy.
DEAD_LETTER_REASONS = {
    Outcome.expired_event: "label_expired",
    Outcome.unmatched_label: "label_unmatched",
    Outcome.ambiguous: "label_ambiguous",
    Outcome.not_allowed: "label_not_allowed",
}
CORRECTION_DEAD_LETTER = "label_correction"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An accepted source event as the store keeps it: the cleaned text the model saw and
    the prediction it served. ``label`` set: an inline label (trained at once, remembered
    so that a later label for it is a duplicate or a correction)."""

    id: str
    task: str
    text: str
    ts: float
    predicted: str | None = None
    confidence: float = 0.0
    model_version: int = 0
    label: str | None = None

    @property
    def nbytes(self) -> int:
        """What the ``max_bytes`` cap counts for this event."""
        return (len(self.text.encode("utf-8", "surrogatepass")) + len(self.id) + len(self.task)
                + len(self.predicted or "") + 64)

    def to_list(self) -> list:
        return [self.id, self.task, self.text, self.ts, self.predicted, self.confidence,
                self.model_version]

    @classmethod
    def from_list(cls, row: list) -> "PendingEvent":
        return cls(row[0], row[1], row[2], float(row[3]), row[4], float(row[5]), int(row[6]))


@dataclass(frozen=True, slots=True)
class Joined:
    """A label met its event: train on (``text``, ``label``) once. ``predicted`` /
    ``model_version`` are what was served when the event arrived (delayed-prequential:
    :attr:`correct`); ``delay_s`` is the label's event time minus the event's (may be
    negative: a label stamped before its event). ``kind``: label, correction (policy
    retrain: a second training on a new label) or inline (the event carried its label)."""

    id: str
    task: str
    text: str
    label: str
    predicted: str | None
    confidence: float
    model_version: int
    event_ts: float
    label_ts: float
    kind: str = "label"

    @property
    def delay_s(self) -> float:
        return self.label_ts - self.event_ts

    @property
    def correct(self) -> bool:
        return self.predicted == self.label

    def to_list(self) -> list:
        return [self.id, self.task, self.text, self.label, self.predicted, self.confidence,
                self.model_version, self.event_ts, self.label_ts, self.kind]

    @classmethod
    def from_list(cls, row: list) -> "Joined":
        return cls(row[0], row[1], row[2], row[3], row[4], float(row[5]), int(row[6]),
                   float(row[7]), float(row[8]), row[9])


@dataclass(frozen=True, slots=True)
class LabelResult:
    """The outcome of one label. ``dead_letter`` is the reason to dead-letter
    ``label`` with (its payload and source coordinates), None when it is not one;
    ``joined`` is the training item this label queued (also in ``take_ready``)."""

    outcome: Outcome
    label: Label
    task: str | None = None
    dead_letter: str | None = None
    message: str = ""
    joined: Joined | None = None

    def to_list(self) -> list:
        return [self.outcome.value, self.label.to_list(), self.task, self.dead_letter,
                self.message, self.joined.to_list() if self.joined is not None else None]

    @classmethod
    def from_list(cls, row: list) -> "LabelResult":
        return cls(Outcome(row[0]), Label.from_list(row[1]), row[2], row[3], row[4],
                   Joined.from_list(row[5]) if row[5] is not None else None)
