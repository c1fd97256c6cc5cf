"""Publish a CSV or JSONL file to a topic with kafka-python (progress bar, optional rate).

CSV rows become JSON events: ``id`` = ``<file stem>-<row>`` unless an ``id`` column
exists, ``text`` from the text column, ``label`` from ``label`` (or ``category``,
BANKING77's name), other columns kept as fields. JSONL lines are sent as they are,
byte for byte, so malformed lines reach the worker (and its dead-letter topic).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Iterable, Iterator

import orjson

LABEL_COLUMNS = ("label", "category", "sentiment", "intent")


def iter_payloads(path: str | Path, *, text_column: str = "text",
                  label_column: str | None = None) -> Iterator[bytes]:
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            for line in fh:
                line = line.rstrip(b"\r\n")
                if line:
                    yield line
        return
    if path.suffix != ".csv":
        raise ValueError(f"FILE must end in .csv or .jsonl, got {path.name!r}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if text_column not in columns:
            raise ValueError(f"{path.name}: no {text_column!r} column (columns: {columns})")
        label_col = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
        for i, row in enumerate(reader):
            event = {k: v for k, v in row.items() if k not in (text_column, label_col) and v != ""}
            event.setdefault("id", f"{path.stem}-{i}")
            event["text"] = row[text_column]
            if label_col and row.get(label_col):
                event["label"] = row[label_col]
            yield orjson.dumps(event)


class RateLimiter:
    """At most ``rate`` calls per second on average (None: unlimited)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._start = time.monotonic()
        self._n = 0

    def wait(self) -> None:
        if not self.rate:
            return
        self._n += 1
        ahead = self._n / self.rate - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)


def make_producer(bootstrap: str, **client_kwargs):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                         client_id="streamlearner-publish", **client_kwargs)


def publish(bootstrap: str, topic: str, payloads: Iterable[bytes], *, rate: float | None = None,
            limit: int | None = None, progress: bool = True, producer=None,
            client_kwargs: dict | None = None) -> int:
    """Send payloads, wait for every acknowledgement; returns how many were sent."""
    from tqdm import tqdm

    own = producer is None
    producer = producer or make_producer(bootstrap, **(client_kwargs or {}))
    limiter = RateLimiter(rate)
    sent = 0
    futures = []
    try:
        with tqdm(total=limit, unit="ev", desc=f"publish {topic}", disable=not progress) as bar:
            for payload in payloads:
                if limit is not None and sent >= limit:
                    break
                limiter.wait()
                futures.append(producer.send(topic, value=payload))
                sent += 1
                bar.update(1)
                if len(futures) >= 1000:
                    for f in futures:
                        f.get(timeout=60)
                    futures.clear()
            producer.flush()
            for f in futures:
                f.get(timeout=60)
    finally:
        if own:
            producer.close()
    return sent
