"""Recorded streams: what ``streamlearner tune`` replays, in event order.

A recorded stream is a list of :class:`StreamEvent` sorted by event time. Each one is what
the worker would have admitted (decoded, validated, cleaned, deduplicated by id: the
``streams.admit`` code the worker runs) with the time its label became known:
``label_ts == ts`` when the label rode inside the event, later when it came as a separate
label record (``lifecycle.labels`` contract: ``{"id", "label", "ts"}``), never when there
was none. Sources:

* files, one per task: ``.jsonl`` lines as published (source events and label records mixed),
  or ``.csv`` rows read the way ``streamlearner publish`` sends them (``text``, ``label`` or
  ``category``, optional ``id``, ``ts``, ``label_ts`` or ``label_delay_s`` columns). Without a
  ``ts`` the row number is the event time, the files following each other in the order given;
* a range of Kafka topics, read without a consumer group (``streams.topics.read_topic``:
  nothing committed, nothing rebalanced), offsets ``[start, end)`` of every partition;
* in-memory rows (the benchmarks and tests): :func:`from_rows`.

>>> events = from_rows([("feedback", "lost card", "card"), ("feedback", "rate?", None)])
>>> [(e.id, e.ts, e.label, e.label_ts) for e in events]
[('row-0', 0.0, 'card', 0.0), ('row-1', 1.0, None, None)]
>>> tune, held_out = split(events, 0.5)
>>> len(tune), len(held_out)
(1, 1)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import orjson

__all__ = ["StreamError", "StreamEvent", "from_files", "from_records", "from_rows", "from_segments",
           "from_topics", "split"]


class StreamError(ValueError):
    """A recorded stream that cannot be replayed (reported before any trial runs)."""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    task: str                  # the learner task (head) it is predicted and trained with
    text: str                  # cleaned, as the worker trains on it
    ts: float                  # event time: when it arrives and is predicted
    label: str | None = None
    label_ts: float | None = None   # when its label became known (None: never labeled)
    segment: str | None = None      # a boundary (file, benchmark task) closes open batches


def from_rows(rows: Iterable[tuple[str, str, str | None]], *, start: float = 0.0,
              segment: str | None = None, prefix: str = "row") -> list[StreamEvent]:
    """``(task, text, label)`` rows, one second apart, labels known on arrival."""
    out = []
    for i, (task, text, label) in enumerate(rows):
        ts = start + i
        out.append(StreamEvent(f"{prefix}-{i}", task, text, ts, label,
                               ts if label is not None else None, segment))
    return out


def from_segments(segments: Iterable[tuple[str, str, Sequence[tuple[str, str]]]], *,
                  spacing: float = 0.001) -> list[StreamEvent]:
    """``[(segment name, task, [(text, label)])]`` one after the other, ``spacing`` seconds
    apart (a benchmark's tasks as one stream; each segment's end closes its batches)."""
    out: list[StreamEvent] = []
    for name, task, rows in segments:
        for text, label in rows:
            ts = len(out) * spacing
            out.append(StreamEvent(f"{name}-{len(out)}", task, text, ts, label, ts, name))
    return out


def split(events: Sequence[StreamEvent], head: float | int) -> tuple[list, list]:
    """The first ``head`` events (a count, or a fraction of the stream) and the rest."""
    n = len(events)
    cut = int(head) if isinstance(head, int) and not isinstance(head, bool) else math.floor(head * n)
    if not 0 < cut < n:
        raise StreamError(f"the tuning segment must hold between 1 and {n - 1} of the {n} "
                          f"events, got {cut}")
    return list(events[:cut]), list(events[cut:])


# -- the worker's admission, for raw payloads ----------------------------------------------

class _Admitter:
    """Raw payloads -> events and labels, with the worker's decode/clean/dedup-by-id."""

    def __init__(self, limits) -> None:
        from streams.dedup import Deduplicator

        self.limits = limits
        self.dedup = Deduplicator(id_capacity=limits.dedup_ids, text_window=0)
        self.events: list[StreamEvent] = []
        self.labels: list[tuple[str, str | None, str, float]] = []   # (id, task, label, ts)
        self.rejected: dict[str, int] = {}

    def add(self, raw: bytes, *, task: str, received_at: float, coordinates=("", 0, 0),
            segment: str | None = None) -> None:
        from lifecycle.labels import RejectedLabel, decode_label
        from streams.admit import RawEvent, admit

        if _is_label_record(raw):
            try:
                lab = decode_label(raw, received_at=received_at)
            except RejectedLabel as bad:
                self._reject(bad.reason.value)
                return
            self.labels.append((lab.id, lab.task or task, lab.label, lab.ts))
            return
        topic, partition, offset = coordinates
        got = admit([RawEvent(raw, topic, partition, offset, received_at)], task=task,
                    limits=self.limits, dedup=self.dedup, received_at=received_at)
        for _, reason, _ in got.rejected:
            self._reject(reason.value)
        if got.duplicates:
            self._reject("duplicate")
        for _, e in got.accepted:
            self.events.append(StreamEvent(e.id, task, e.text, e.ts, e.label,
                                           e.ts if e.label is not None else None, segment))

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def finish(self) -> list[StreamEvent]:
        """Join label records to their events (first label wins; a label never comes
        before its event), then sort by event time (stable: file order breaks ties)."""
        by_key = {(e.task, e.id): i for i, e in enumerate(self.events)}
        by_id: dict[str, list[int]] = {}
        for i, e in enumerate(self.events):
            by_id.setdefault(e.id, []).append(i)
        events = list(self.events)
        for event_id, task, label, ts in sorted(self.labels, key=lambda x: x[3]):
            hits = [by_key[(task, event_id)]] if (task, event_id) in by_key else by_id.get(event_id, [])
            for i in hits:
                e = events[i]
                if e.label is None:
                    events[i] = replace(e, label=label, label_ts=max(ts, e.ts))
        return sorted(events, key=lambda e: e.ts)


def _is_label_record(raw: bytes) -> bool:
    """A JSON object with a ``label`` and no ``text``: a label record, not a source event."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "text" not in obj and "label" in obj


def _csv_payloads(path: Path) -> Iterable[tuple[bytes, float | None, float | None]]:
    """(payload, ts, label delay) per row, as ``streamlearner publish`` would send it."""
    from tools.publish import LABEL_COLUMNS

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "text" not in columns:
            raise StreamError(f"{path}: no 'text' column (columns: {columns})")
        label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
        for i, row in enumerate(reader):
            event: dict[str, Any] = {"id": row.get("id") or f"{path.stem}-{i}", "text": row["text"]}
            if label_col and row.get(label_col):
                event["label"] = row[label_col]
            ts = _number(row, "ts", path, i)
            if ts is not None:
                event["ts"] = ts
            delay = _number(row, "label_delay_s", path, i)
            label_ts = _number(row, "label_ts", path, i)
            if label_ts is not None and ts is not None:
                delay = label_ts - ts
            yield orjson.dumps(event), ts, delay


def _number(row: Mapping[str, str], column: str, path: Path, i: int) -> float | None:
    value = (row.get(column) or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise StreamError(f"{path}: row {i}: column {column!r} must be a number, got {value!r}") from None


def from_files(files: Sequence[tuple[str, str]], *, limits=None,
               label_delay_s: float = 0.0) -> tuple[list[StreamEvent], dict[str, int]]:
    """``[(task, path)]`` -> (events in event order, rejected counts by reason).
    ``label_delay_s`` delays every label that rode inside its event (CSV rows may give
    their own ``label_delay_s``)."""
    from streams.config import StreamConfig

    admitter = _Admitter(limits or StreamConfig())
    clock = 0.0
    for task, name in files:
        path = Path(name)
        if not path.is_file():
            raise StreamError(f"{name}: no such file")
        start = len(admitter.events)
        delays: dict[int, float] = {}
        if path.suffix == ".jsonl":
            with open(path, "rb") as fh:
                for line in fh:
                    line = line.rstrip(b"\r\n")
                    if line:
                        admitter.add(line, task=task, received_at=clock, segment=str(path))
                        clock += 1.0
        elif path.suffix == ".csv":
            for payload, ts, delay in _csv_payloads(path):
                before = len(admitter.events)
                admitter.add(payload, task=task, received_at=clock if ts is None else ts,
                             segment=str(path))
                if delay is not None and len(admitter.events) > before:
                    delays[len(admitter.events) - 1] = delay
                clock = (clock if ts is None else ts) + 1.0
        else:
            raise StreamError(f"{name}: a recorded stream is a .csv or .jsonl file")
        for i in range(start, len(admitter.events)):
            e = admitter.events[i]
            delay = delays.get(i, label_delay_s)
            if e.label is not None and delay:
                admitter.events[i] = replace(e, label_ts=e.ts + max(0.0, delay))
    events = admitter.finish()
    if not events:
        raise StreamError("the recorded stream has no event the worker would accept")
    return events, admitter.rejected


def from_records(records: Iterable[Any], *, tasks: Mapping[str, str], limits=None,
                 labels_topic: str | None = None, start: int = 0,
                 end: int | None = None) -> tuple[list[StreamEvent], dict[str, int]]:
    """Kafka records (``topic``, ``partition``, ``offset``, ``timestamp`` ms, ``value``) of
    source topics (``tasks``: topic -> task) and optionally a labels topic, offsets
    ``[start, end)`` of each partition."""
    from streams.config import StreamConfig

    admitter = _Admitter(limits or StreamConfig())
    for rec in records:
        if rec.offset < start or (end is not None and rec.offset >= end) or rec.value is None:
            continue
        received = (rec.timestamp or 0) / 1000.0
        if rec.topic == labels_topic:
            admitter.add(rec.value, task="", received_at=received)
            continue
        task = tasks.get(rec.topic)
        if task is None:
            continue
        admitter.add(rec.value, task=task, received_at=received,
                     coordinates=(rec.topic, rec.partition, rec.offset))
    events = admitter.finish()
    if not events:
        raise StreamError(f"no accepted event in offsets [{start}, {end}) of {sorted(tasks)}")
    return events, admitter.rejected


def from_topics(kafka, topics: Sequence[str], *, labels_topic: str | None = None,
                start: int = 0, end: int | None = None, limits=None,
                timeout_s: float = 30.0) -> tuple[list[StreamEvent], dict[str, int]]:
    """A range of the source topics ``topics`` (and a labels topic) of ``kafka`` (a
    :class:`~streams.config.KafkaConfig`), read from the beginning to the end when called
    without a consumer group; the task of a topic is the one the worker gives it."""
    from streams.topics import read_topic

    sources = kafka.source_topics()
    unknown = [t for t in topics if t not in sources]
    if unknown:
        raise StreamError(f"topic(s) {unknown} are not source topics of these settings "
                          f"({sorted(sources)})")

    def records():
        for name in [*topics, *([labels_topic] if labels_topic else [])]:
            yield from read_topic(kafka.servers, name, client_kwargs=kafka.client_kwargs(),
                                  timeout_s=timeout_s)

    return from_records(records(), tasks={t: sources[t] for t in topics}, limits=limits,
                        labels_topic=labels_topic, start=start, end=end)
