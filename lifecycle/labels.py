"""Label record contract: decoding raw payloads of the labels topic.

A label says which label an earlier (or later) source event should have been trained with.
One UTF-8 JSON object per message::

    {"id": "fb-00042", "label": "card_arrival", "task": "feedback", "ts": "2026-11-30T10:02:00Z"}

``id`` (required) is the source event's id; ``label`` (required) the class; ``task``
(optional) names the task when event ids are not unique across tasks (without it the join
looks the id up in every task, lifecycle/join.py); ``ts`` (optional, ISO-8601 or epoch
seconds, default the receive time) is the label's *event time*: it decides the join window,
so a replayed stream joins the same way at any speed. Give it explicitly when you replay.
Unknown extra fields are ignored; null and absent are the same thing.

:func:`decode_label` turns the raw bytes into a :class:`Label` or raises
:class:`RejectedLabel` with one :class:`LabelReason` (a bounded set: metric label and
dead-letter ``reason``), so the caller dead-letters a bad record with its coordinates.

>>> tasks = {"feedback": None, "market": {"positive", "negative", "neutral"}}
>>> lab = decode_label(b'{"id": "mk-7", "label": "positive", "task": "market", "ts": 5}',
...                    tasks=tasks, received_at=10.0)
>>> (lab.id, lab.label, lab.task, lab.ts)
('mk-7', 'positive', 'market', 5.0)
>>> decode_label(b'{"id": "mk-7", "label": "up", "task": "market"}', tasks=tasks, received_at=0)
Traceback (most recent call last):
...
lifecycle.labels.RejectedLabel: label_not_allowed: label 'up' is not in task 'market''s label set
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping

import orjson

from streams.records import parse_ts as _parse_ts

__all__ = ["Label", "LabelReason", "RejectedLabel", "decode_label", "label_sets"]

MAX_ID_CHARS = 512       # same bounds as a source event's id and label (streams/records.py)
MAX_LABEL_CHARS = 256
MAX_PAYLOAD_BYTES = 4096  # a label record is a few fields; early labels keep their payload


class LabelReason(str, enum.Enum):
    """Why a label record was rejected (values shared with the event contract where they
    mean the same thing)."""

    invalid_utf8 = "invalid_utf8"
    invalid_json = "invalid_json"
    not_an_object = "not_an_object"
    missing_field = "missing_field"
    empty_field = "empty_field"
    wrong_type = "wrong_type"
    field_too_long = "field_too_long"
    payload_too_large = "payload_too_large"
    invalid_ts = "invalid_ts"
    unknown_task = "unknown_task"
    label_not_allowed = "label_not_allowed"


class RejectedLabel(Exception):
    """A label record that breaks the contract; ``message`` names the field."""

    def __init__(self, reason: LabelReason, message: str) -> None:
        super().__init__(reason, message)  # keeps the exception picklable
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class Label:
    """A validated label. ``payload`` is the record as received (UTF-8 text) and ``source``
    its ``(topic, partition, offset)``: a label that expires unmatched long after it was
    consumed is dead-lettered with both."""

    id: str
    label: str
    task: str | None
    ts: float
    payload: str | None = None
    source: tuple[str, int, int] | None = None

    def to_list(self) -> list:
        return [self.id, self.label, self.task, self.ts, self.payload,
                list(self.source) if self.source is not None else None]

    @classmethod
    def from_list(cls, row: list) -> "Label":
        src = row[5]
        return cls(row[0], row[1], row[2], float(row[3]), row[4],
                   (str(src[0]), int(src[1]), int(src[2])) if src is not None else None)


TaskLabels = Mapping[str, Collection[str] | None]


def label_sets(tasks: TaskLabels | None) -> dict[str, frozenset[str] | None] | None:
    """Normalise ``{task: labels or None}`` (None: any label) to frozensets; checks names.

    >>> label_sets({"market": ["up", "down"], "feedback": None})["market"] == {"up", "down"}
    True
    """
    if tasks is None:
        return None
    out: dict[str, frozenset[str] | None] = {}
    for task, labels in tasks.items():
        if not isinstance(task, str) or not task:
            raise ValueError(f"tasks must be named by non-empty strings, got {task!r}")
        if labels is None:
            out[task] = None
            continue
        if isinstance(labels, str):
            raise ValueError(f"tasks[{task!r}] must be a collection of labels, got a string")
        allowed = frozenset(labels)
        if not allowed or any(not isinstance(y, str) or not y.strip() for y in allowed):
            raise ValueError(f"tasks[{task!r}] must hold non-empty label strings, got {labels!r}")
        out[task] = allowed
    return out


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _required_str(obj: dict, name: str, limit: int) -> str:
    value = obj.get(name)
    if value is None:
        raise RejectedLabel(LabelReason.missing_field, f"field {name!r} is missing")
    if type(value) is not str:
        raise RejectedLabel(LabelReason.wrong_type,
                            f"field {name!r} must be a string, got {_type_name(value)}")
    value = value.strip() if name != "id" else value
    if not value.strip():
        raise RejectedLabel(LabelReason.empty_field, f"field {name!r} is empty")
    if len(value) > limit:
        raise RejectedLabel(LabelReason.field_too_long,
                            f"field {name!r} has {len(value)} characters, more than the limit "
                            f"of {limit}")
    return value


def parse_ts(value: object, default: float) -> float:
    """Epoch seconds from a JSON ``ts`` (number or ISO-8601 string; naive means UTC), by the
    source events' rule (``streams.records.parse_ts``)."""
    return _parse_ts(value, default,
                     lambda reason, message: RejectedLabel(LabelReason[reason], message))


def decode_label(
    raw: bytes | None,
    *,
    received_at: float,
    tasks: TaskLabels | None = None,
    source: tuple[str, int, int] | None = None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    max_id_chars: int = MAX_ID_CHARS,
    max_label_chars: int = MAX_LABEL_CHARS,
) -> Label:
    """Validate one raw label payload; raise :class:`RejectedLabel`.

    Checks run in this order, the first failure wins: payload size, UTF-8, JSON, object,
    ``id``, ``label``, ``task``, ``ts``. ``tasks`` maps each configured task to its fixed
    label set (None: any label); when given, a ``task`` outside it is ``unknown_task`` and
    a label outside the task's set ``label_not_allowed`` -- also for a label without
    ``task`` that no task could take (every task has a fixed set and none holds it).
    ``tasks=None`` accepts any task and label. A missing ``ts`` becomes ``received_at``.
    """
    if raw is None:
        raise RejectedLabel(LabelReason.invalid_json, "payload is empty (null record value)")
    if len(raw) > max_payload_bytes:
        raise RejectedLabel(LabelReason.payload_too_large, f"payload is {len(raw)} bytes, more "
                            f"than the limit of {max_payload_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedLabel(LabelReason.invalid_utf8,
                            f"payload is not valid UTF-8 (at byte {exc.start})") from None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise RejectedLabel(LabelReason.invalid_json, f"payload is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise RejectedLabel(LabelReason.not_an_object,
                            f"payload must be a JSON object, got {_type_name(obj)}")
    label_id = _required_str(obj, "id", max_id_chars)
    label = _required_str(obj, "label", max_label_chars)
    task = obj.get("task")
    if task is not None:
        if type(task) is not str:
            raise RejectedLabel(LabelReason.wrong_type,
                                f"field 'task' must be a string, got {_type_name(task)}")
        task = task.strip()
        if not task:
            raise RejectedLabel(LabelReason.empty_field, "field 'task' is empty")
    sets = label_sets(tasks)
    if sets is not None:
        if task is not None:
            if task not in sets:
                raise RejectedLabel(LabelReason.unknown_task, f"task {task[:64]!r} is not one of "
                                    f"{sorted(sets)}")
            allowed = sets[task]
            if allowed is not None and label not in allowed:
                raise RejectedLabel(LabelReason.label_not_allowed, f"label {label[:64]!r} is not "
                                    f"in task {task!r}'s label set")
        elif sets and all(s is not None and label not in s for s in sets.values()):
            raise RejectedLabel(LabelReason.label_not_allowed,
                                f"label {label[:64]!r} is in no task's label set")
    ts = parse_ts(obj.get("ts"), received_at)
    return Label(label_id, label, task, ts, text, source)
