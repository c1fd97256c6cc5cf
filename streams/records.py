"""Event contract: decoding raw source-topic payloads, and the output records.

Users publish one JSON object per message to a source topic; the topic decides
the task (``feedback`` or ``market``). :func:`decode_event` turns the raw bytes
into an :class:`Event` or raises :class:`RejectedEvent` carrying exactly one
:class:`Reason` (a bounded set, safe to use as a metric label).

>>> e = decode_event(b'{"id": "a1", "text": "Great app", "ts": 0}',
...                  task="feedback", received_at=10.0)
>>> (e.id, e.text, e.ts, e.label)
('a1', 'Great app', 0.0, None)
>>> decode_event(b'[1, 2]', task="feedback", received_at=0.0)
Traceback (most recent call last):
...
streams.records.RejectedEvent: not_an_object: payload must be a JSON object, got list

Null and absent are the same thing everywhere in the contract: a required
field that is null is ``missing_field``; an optional one takes its default.
"""

import base64
import dataclasses
import enum
import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import faust
import orjson

__all__ = [
    "SCHEMA_VERSION",
    "SOURCE_FIELDS",
    "DeadLetter",
    "Event",
    "Prediction",
    "Reason",
    "RejectedEvent",
    "dead_letter",
    "decode_event",
]

SCHEMA_VERSION = 1


class Reason(str, enum.Enum):
    """Why an event was rejected. Values are metric labels and dead-letter fields."""

    invalid_utf8 = "invalid_utf8"
    invalid_json = "invalid_json"
    not_an_object = "not_an_object"
    missing_field = "missing_field"
    empty_field = "empty_field"
    wrong_type = "wrong_type"
    text_too_long = "text_too_long"
    field_too_long = "field_too_long"
    payload_too_large = "payload_too_large"
    invalid_ts = "invalid_ts"
    empty_after_cleaning = "empty_after_cleaning"
    unknown_task = "unknown_task"
    label_not_allowed = "label_not_allowed"   # outside the task's fixed label set (KAFKA_TASKS)
    internal_error = "internal_error"


class RejectedEvent(Exception):
    """An input event that breaks the contract; ``message`` names the field."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)  # keeps the exception picklable
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A validated input event. ``text`` is as received (see ``cleaning``).

    ``fields`` holds the known source fields that were present and non-null;
    treat it as read-only.
    """

    id: str
    task: str
    text: str
    ts: float
    label: str | None
    fields: Mapping[str, object]


# Known optional source fields per task: name -> expected JSON type.
# Numbers are stored as float; anything not listed here is ignored.
SOURCE_FIELDS: Mapping[str, Mapping[str, type]] = {
    "feedback": {"channel": str, "customer_id": str},
    "market": {"symbol": str, "price_change": float, "volume": float},
}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _wrong_type(name: str, expected: str, value: object) -> RejectedEvent:
    return RejectedEvent(
        Reason.wrong_type, f"field {name!r} must be {expected}, got {_type_name(value)}"
    )


def _required_str(obj: dict, name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise RejectedEvent(Reason.missing_field, f"field {name!r} is missing")
    if type(value) is not str:
        raise _wrong_type(name, "a string", value)
    if not value.strip():
        raise RejectedEvent(Reason.empty_field, f"field {name!r} is empty")
    return value


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `true` is not a number in this contract.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The epoch seconds an ISO-8601 string can express (years 1-9999); this also
# catches milliseconds sent as seconds.
_MIN_TS = datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()
_MAX_TS = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc).timestamp()


def parse_ts(value: object, default: float,
             reject: Callable[[str, str], Exception]) -> float:
    """Epoch seconds from a JSON ``ts`` (a number, or an ISO-8601 string; naive means UTC);
    ``default`` when absent. A bad value raises ``reject(reason, message)``, ``reason`` being
    ``"invalid_ts"`` or ``"wrong_type"`` (source events and label records share the rule)."""
    if value is None:
        return float(default)
    if _is_number(value):
        ts = float(value)  # finite: orjson rejects NaN, Infinity and overflowing numbers
        if not _MIN_TS <= ts <= _MAX_TS:
            hint = " (milliseconds?)" if ts > _MAX_TS else ""
            raise reject("invalid_ts", "field 'ts' must be epoch seconds within years 1-9999, "
                         f"got {value!r}{hint}")
        return ts
    if type(value) is not str:
        raise reject("wrong_type", "field 'ts' must be an ISO-8601 string or epoch seconds, "
                     f"got {_type_name(value)}")
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not accept 'Z'
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise reject("invalid_ts",
                     f"field 'ts' is not an ISO-8601 timestamp: {value[:40]!r}") from None


def _reject_event(reason: str, message: str) -> RejectedEvent:
    return RejectedEvent(Reason[reason], message)


def _source_fields(obj: dict, spec: Mapping[str, type]) -> dict[str, object]:
    fields: dict[str, object] = {}
    for name, kind in spec.items():
        value = obj.get(name)
        if value is None:
            continue
        if kind is str:
            if type(value) is not str:
                raise _wrong_type(name, "a string", value)
            fields[name] = value
        else:
            if not _is_number(value):
                raise _wrong_type(name, "a number", value)
            fields[name] = float(value)
    return fields


MAX_ID_CHARS = 512      # an id is a Kafka key and rides in every output record
MAX_LABEL_CHARS = 256   # a label is a head's class name and rides in every prediction


def decode_event(
    raw: bytes | None,
    *,
    task: str,
    received_at: float,
    max_text_chars: int = 2000,
    max_payload_bytes: int = 65536,
    max_id_chars: int = MAX_ID_CHARS,
    max_label_chars: int = MAX_LABEL_CHARS,
) -> Event:
    """Validate one raw payload of a ``task`` source topic; raise :class:`RejectedEvent`.

    Checks run in this order and the first failure wins: payload size, UTF-8,
    JSON, object, then ``id``, ``text``, ``label``, ``ts`` and the task's source
    fields. A missing ``ts`` becomes ``received_at``. A ``None`` payload (a
    Kafka record with a null value) is rejected as ``invalid_json``.
    ``task`` is any configured task (KAFKA_TASKS); the optional source fields are known for
    the default ones (:data:`SOURCE_FIELDS`), other tasks keep none.
    """
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    spec = SOURCE_FIELDS.get(task, {})
    if raw is None:
        raise RejectedEvent(Reason.invalid_json, "payload is empty (null record value)")
    if len(raw) > max_payload_bytes:
        raise RejectedEvent(
            Reason.payload_too_large,
            f"payload is {len(raw)} bytes, more than the limit of {max_payload_bytes}",
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedEvent(
            Reason.invalid_utf8, f"payload is not valid UTF-8 (at byte {exc.start})"
        ) from None
    try:
        obj = orjson.loads(decoded)
    except orjson.JSONDecodeError as exc:
        raise RejectedEvent(Reason.invalid_json, f"payload is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise RejectedEvent(
            Reason.not_an_object, f"payload must be a JSON object, got {_type_name(obj)}"
        )

    event_id = _required_str(obj, "id")
    if len(event_id) > max_id_chars:
        raise RejectedEvent(
            Reason.field_too_long,
            f"field 'id' has {len(event_id)} characters, more than the limit of {max_id_chars}",
        )
    text = _required_str(obj, "text")
    if len(text) > max_text_chars:
        raise RejectedEvent(
            Reason.text_too_long,
            f"field 'text' has {len(text)} characters, more than the limit of {max_text_chars}",
        )
    label = obj.get("label")
    if label is not None:
        if type(label) is not str:
            raise _wrong_type("label", "a string", label)
        label = label.strip()
        if not label:
            raise RejectedEvent(Reason.empty_field, "field 'label' is empty")
        if len(label) > max_label_chars:
            raise RejectedEvent(
                Reason.field_too_long,
                f"field 'label' has {len(label)} characters, more than the limit of "
                f"{max_label_chars}",
            )
    ts = parse_ts(obj.get("ts"), received_at, _reject_event)
    return Event(
        id=event_id,
        task=task,
        text=text,
        ts=ts,
        label=label,
        fields=_source_fields(obj, spec),
    )


class Prediction(faust.Record, serializer="json", include_metadata=False, coerce=True):
    """What the model said about one event; ``ts`` is when it said it (epoch seconds)."""

    id: str
    task: str
    label: str | None
    confidence: float
    model_version: int
    ts: float
    schema_version: int = SCHEMA_VERSION


class DriftAlert(faust.Record, serializer="json", include_metadata=False, coerce=True):
    """A drift detection (``drift-alerts``, key: task). ``kind`` is concept / data / label;
    ``threshold`` is set for the error-stream detectors, ``p_value`` for the two-sample tests;
    ``event`` counts the task's events since the worker started; ``action`` says what the
    worker did (``adapt``: rollback checkpoint + boosted updates; ``boost``: window restarted)."""

    task: str
    kind: str
    detector: str
    statistic: float
    threshold: float | None
    p_value: float | None
    reference_size: int
    window_size: int
    event: int
    model_version: int
    action: str
    ts: float
    schema_version: int = SCHEMA_VERSION


class ModelEvent(faust.Record, serializer="json", include_metadata=False, coerce=True):
    """A change of the live model that was not an update (``model-events``, key: kind):
    ``kind`` ``rollback`` with ``reason`` ``regression`` (the stability guard: ``task``'s probe
    accuracy fell from ``champion_accuracy`` to ``accuracy``) or ``manual`` (CLI / API)."""

    kind: str
    reason: str
    from_version: int
    to_version: int
    task: str | None
    accuracy: dict
    champion_accuracy: dict
    ts: float
    schema_version: int = SCHEMA_VERSION


class ExplanationRecord(faust.Record, serializer="json", include_metadata=False, coerce=True):
    """Word attributions for one stream prediction (``explanations``, key: event id);
    ``words`` holds ``{"word", "start", "end", "score"}`` objects in text order. A record
    over the output bound keeps the words with the largest absolute scores (still in text
    order) and says so with ``words_truncated``; build it with :func:`explanation_record`."""

    id: str
    task: str
    label: str
    probability: float
    method: str
    model_version: int
    words: list
    ts: float
    words_truncated: bool = False
    schema_version: int = SCHEMA_VERSION


def record_size(record: faust.Record) -> int:
    """Bytes of ``record`` as Faust serialises it (the value the producer sends)."""
    return len(record.dumps(serializer="json"))


def explanation_record(*, max_bytes: int | None = None, **fields) -> ExplanationRecord:
    """An :class:`ExplanationRecord` of at most ``max_bytes`` serialised bytes.

    >>> words = [{"word": "w" * 50, "start": 0, "end": 50, "score": float(i)} for i in range(40)]
    >>> rec = explanation_record(max_bytes=1000, id="e1", task="t", label="l", probability=0.5,
    ...                          method="ig", model_version=1, words=words, ts=0.0)
    >>> rec.words_truncated, record_size(rec) <= 1000, rec.words[-1]["score"]
    (True, True, 39.0)
    """
    record = ExplanationRecord(**fields)
    if max_bytes is None or record_size(record) <= max_bytes:
        return record
    words = list(fields["words"])
    empty = record_size(ExplanationRecord(**{**fields, "words": [], "words_truncated": True}))
    budget = max_bytes - empty
    ranked = sorted(range(len(words)), key=lambda i: -abs(float(words[i].get("score", 0.0))))
    keep, used = [], 0
    for i in ranked:
        cost = len(orjson.dumps(words[i])) + 1   # + the comma between list items
        if used + cost > budget:
            continue
        keep.append(i)
        used += cost
    return ExplanationRecord(**{**fields, "words": [words[i] for i in sorted(keep)],
                                "words_truncated": True})


class DeadLetter(faust.Record, serializer="json", include_metadata=False, coerce=True):
    """A rejected event with its Kafka coordinates; build it with :func:`dead_letter`.

    ``payload`` is the original bytes as UTF-8 text, or base64 when they are
    not valid UTF-8 (``payload_encoding`` says which). ``payload_bytes`` and
    ``payload_sha256`` describe the original bytes. A dead letter never exceeds the output
    bound (``STREAM_DEAD_LETTER_MAX_BYTES``): a larger payload is cut
    (``payload_truncated``), and the original stays readable at ``topic``/``partition``/
    ``offset`` while the source topic retains it (``streamlearner dlq replay`` re-reads it
    there and checks it against ``payload_sha256``).
    """

    payload: str
    payload_encoding: str
    topic: str
    partition: int
    offset: int
    reason: str
    message: str
    ts: float
    payload_truncated: bool = False
    payload_bytes: int = 0
    payload_sha256: str = ""
    schema_version: int = SCHEMA_VERSION


DEAD_LETTER_MAX_BYTES = 256 * 1024


def _escaped_len(text: str) -> int:
    return len(orjson.dumps(text)) - 2   # JSON-escaped UTF-8 bytes, without the quotes


def _cut_to(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose JSON-escaped form fits in ``budget`` bytes."""
    if budget <= 0:
        return ""
    n = min(len(text), budget)
    while n > 0:
        size = _escaped_len(text[:n])
        if size <= budget:
            break
        n = min(n - 1, n * budget // size)
    # Grow back by what the proportional step gave up (at most a few passes).
    step = max(1, (budget - _escaped_len(text[:n])) // 12)
    while n < len(text) and step > 0:
        if _escaped_len(text[:n + step]) <= budget:
            n += step
        else:
            step //= 2
    return text[:n]


def dead_letter(
    raw: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    reason: Reason,
    message: str,
    ts: float,
    max_bytes: int | None = DEAD_LETTER_MAX_BYTES,
) -> DeadLetter:
    """Wrap a rejected payload, choosing a text-safe encoding for it, within ``max_bytes``
    serialised bytes (``None``: no bound).

    >>> dead_letter(b"\\xff", topic="t", partition=0, offset=7,
    ...             reason=Reason.invalid_utf8, message="m", ts=1.0).payload
    '/w=='
    >>> big = dead_letter(b'{"text": "' + b"x" * 5000 + b'"}', topic="t", partition=0, offset=8,
    ...                   reason=Reason.payload_too_large, message="m", ts=1.0, max_bytes=1024)
    >>> big.payload_truncated, big.payload_bytes, record_size(big) <= 1024
    (True, 5012, True)
    """
    raw = b"" if raw is None else raw
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    fields = dict(payload_encoding=encoding, topic=topic, partition=partition, offset=offset,
                  reason=getattr(reason, "value", reason), message=message, ts=ts, payload_bytes=len(raw),
                  payload_sha256=hashlib.sha256(raw).hexdigest())
    record = DeadLetter(payload=payload, **fields)
    if max_bytes is None or len(payload) + 1024 <= max_bytes and record_size(record) <= max_bytes:
        return record
    budget = max_bytes - record_size(DeadLetter(payload="", payload_truncated=True, **fields))
    if encoding == "base64":
        # Cut the original bytes on a 3-byte boundary so the base64 text stays decodable.
        keep = max(0, budget) // 4 * 3
        cut = base64.b64encode(raw[:keep]).decode("ascii")
    else:
        cut = _cut_to(payload, budget)
    if len(cut) == len(payload) and record_size(record) <= max_bytes:
        return record
    return DeadLetter(payload=cut, payload_truncated=True, **fields)


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """An accepted event as the trainer sees it: cleaned, with the prediction that served it
    and its source coordinates (``timestamp``: the source record's, for freshness)."""

    id: str
    task: str
    text: str
    label: str | None
    ts: float
    topic: str
    partition: int
    offset: int
    timestamp: float
    predicted: str | None
    confidence: float
    model_version: int


class SampleRecord(faust.Record, serializer="json", include_metadata=False, coerce=True):
    """A :class:`Sample` on the samples topic (key: event id), from a serving replica."""

    id: str
    task: str
    text: str
    label: str | None
    ts: float
    topic: str
    partition: int
    offset: int
    timestamp: float
    predicted: str | None
    confidence: float
    model_version: int
    served_ts: float
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of(cls, sample: Sample, served_ts: float) -> "SampleRecord":
        return cls(served_ts=served_ts,
                   **{f.name: getattr(sample, f.name) for f in dataclasses.fields(Sample)})


_SAMPLE_TYPES = {"id": str, "task": str, "text": str, "ts": float, "topic": str,
                 "partition": int, "offset": int, "timestamp": float, "confidence": float,
                 "model_version": int}


def decode_sample(raw: bytes | None, *, tasks: set[str] | None = None,
                  max_text_chars: int = 2000, max_label_chars: int = MAX_LABEL_CHARS) -> Sample:
    """Validate one samples-topic record (a replica's output: checked all the same, a bad one
    is a dead letter of the samples topic); raise :class:`RejectedEvent`.

    >>> rec = SampleRecord(id="a", task="feedback", text="hi", label=None, ts=1.0, topic="t",
    ...                    partition=0, offset=5, timestamp=1.0, predicted=None,
    ...                    confidence=0.0, model_version=0, served_ts=2.0)
    >>> decode_sample(rec.dumps(serializer="json")).offset
    5
    """
    if raw is None:
        raise RejectedEvent(Reason.invalid_json, "payload is empty (null record value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RejectedEvent(Reason.invalid_json, f"payload is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise RejectedEvent(Reason.not_an_object,
                            f"payload must be a JSON object, got {_type_name(obj)}")
    values = {}
    for name, kind in _SAMPLE_TYPES.items():
        value = obj.get(name)
        if value is None:
            raise RejectedEvent(Reason.missing_field, f"field {name!r} is missing")
        if kind is float:
            if not _is_number(value):
                raise _wrong_type(name, "a number", value)
            value = float(value)
        elif type(value) is not kind:
            raise _wrong_type(name, f"a{'n' if kind is int else ''} {kind.__name__}", value)
        values[name] = value
    for name in ("label", "predicted"):
        value = obj.get(name)
        if value is not None and (type(value) is not str or not value.strip()):
            raise _wrong_type(name, "a non-empty string or null", value)
        if value is not None and len(value) > max_label_chars:
            raise RejectedEvent(Reason.field_too_long, f"field {name!r} is too long")
        values[name] = value
    if not values["text"].strip() or not values["id"].strip():
        raise RejectedEvent(Reason.empty_field, "fields 'id' and 'text' must not be empty")
    if len(values["text"]) > max_text_chars:
        raise RejectedEvent(Reason.text_too_long, f"field 'text' has {len(values['text'])} "
                                                  f"characters, more than {max_text_chars}")
    if tasks is not None and values["task"] not in tasks:
        raise RejectedEvent(Reason.unknown_task, f"field 'task' is {values['task']!r}, not "
                                                 f"one of {sorted(tasks)}")
    return Sample(**values)
