"""Tasks from configuration: which source topics feed which task, and what it may learn.

A task is one classification problem with its own head (its own label space). Several topics
may feed one task (``tickets`` and ``chat`` both carry support intents); a topic feeds exactly
one task. ``KAFKA_TASKS`` names them, inline or as a TOML file:

* inline: ``tickets=tickets,chat;reviews=reviews`` (``name=topic[,topic]``, ``;`` between tasks);
* a file (a value ending in ``.toml``)::

      [tasks.tickets]
      topics = ["tickets", "chat"]
      labels = ["card_arrival", "lost_card"]   # optional: a fixed label set
      batch_size = 64                           # optional: STREAM_BATCH_SIZE for its topics
      max_wait_s = 0.5                     # optional: STREAM_MAX_WAIT_S for them

      [tasks.reviews]
      topics = ["reviews"]

Unset: today's two tasks, ``feedback`` on ``KAFKA_FEEDBACK_TOPIC`` and ``market`` on
``KAFKA_MARKET_TOPIC``. A label outside a task's fixed set (inline or on the labels topic) is
dead-lettered as ``label_not_allowed``. Bad configuration fails at start with a message that
names ``KAFKA_TASKS`` and the key.

>>> [(t.name, t.topics) for t in parse_tasks("tickets=tickets,chat;reviews=reviews")]
[('tickets', ('tickets', 'chat')), ('reviews', ('reviews',))]
>>> parse_tasks("tickets=a;reviews=a")
Traceback (most recent call last):
...
ValueError: tasks: topic 'a' feeds both 'tickets' and 'reviews'; a topic feeds one task
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TaskSpec", "default_tasks", "parse_tasks", "tasks_from_mapping"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_KEYS = {"topics", "labels", "batch_size", "max_wait_s"}
MAX_LABELS = 10_000


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name (a metric label value), source topics, optional fixed label set and
    micro-batching overrides (``None``: the STREAM_* defaults)."""

    name: str
    topics: tuple[str, ...]
    labels: frozenset[str] | None = None
    batch_size: int | None = None
    max_wait_s: float | None = None

    def allows(self, label: str) -> bool:
        return self.labels is None or label in self.labels


def default_tasks(feedback_topic: str, market_topic: str) -> tuple[TaskSpec, ...]:
    return (TaskSpec("feedback", (feedback_topic,)), TaskSpec("market", (market_topic,)))


def parse_tasks(value: str) -> tuple[TaskSpec, ...]:
    """``KAFKA_TASKS``: inline ``name=topic[,topic];...`` or the path of a TOML file."""
    text = value.strip()
    if not text:
        raise ValueError("tasks is empty; unset it for the default tasks")
    if text.endswith(".toml"):
        return _from_file(Path(text))
    tasks: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, topics = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"tasks: expected name=topic[,topic] in {part!r}")
        if name in tasks:
            raise ValueError(f"tasks: task {name!r} is named twice")
        tasks[name] = {"topics": [t.strip() for t in topics.split(",") if t.strip()]}
    return tasks_from_mapping(tasks)


def _from_file(path: Path) -> tuple[TaskSpec, ...]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"tasks: cannot read {str(path)!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"tasks: {str(path)!r} is not valid TOML: {exc}") from None
    extra = set(data) - {"tasks"}
    if extra:
        raise ValueError(f"tasks: {str(path)!r} has unknown top-level keys {sorted(extra)}; "
                         "expected [tasks.<name>] tables")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        raise ValueError(f"tasks: {str(path)!r} has no [tasks.<name>] tables")
    return tasks_from_mapping(tasks, where=str(path))


def tasks_from_mapping(tasks: Mapping[str, Any], where: str = "") -> tuple[TaskSpec, ...]:
    """Validate ``{name: {"topics": [...], "labels": [...]?, ...}}``."""
    at = f" in {where!r}" if where else ""
    if not tasks:
        raise ValueError(f"tasks: no task defined{at}")
    specs: list[TaskSpec] = []
    owner: dict[str, str] = {}
    for name, body in tasks.items():
        key = f"tasks.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"tasks: task name {name!r}{at} must be lower-case letters, digits, "
                             "'_' or '-', starting with a letter (it is a metric label)")
        if not isinstance(body, dict):
            raise ValueError(f"tasks: {key}{at} must be a table")
        unknown = set(body) - _KEYS
        if unknown:
            raise ValueError(f"tasks: {key}{at} has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_KEYS)}")
        topics = body.get("topics")
        if (not isinstance(topics, list) or not topics
                or not all(isinstance(t, str) for t in topics)):
            raise ValueError(f"tasks: {key}.topics{at} must be a non-empty list of topic names")
        for topic in topics:
            if not _TOPIC_RE.match(topic):
                raise ValueError(f"tasks: {key}.topics{at}: {topic!r} is not a valid Kafka "
                                 "topic name")
            if topic in owner:
                raise ValueError(f"tasks: topic {topic!r} feeds both {owner[topic]!r} and "
                                 f"{name!r}; a topic feeds one task")
            owner[topic] = name
        labels = body.get("labels")
        if labels is not None:
            if (not isinstance(labels, list) or not labels
                    or not all(isinstance(y, str) and y.strip() for y in labels)):
                raise ValueError(f"tasks: {key}.labels{at} must be a non-empty list of "
                                 "non-empty strings")
            if len(labels) > MAX_LABELS:
                raise ValueError(f"tasks: {key}.labels{at} has {len(labels)} labels, more "
                                 f"than {MAX_LABELS}")
            labels = frozenset(y.strip() for y in labels)
        batch_size = body.get("batch_size")
        if batch_size is not None and (isinstance(batch_size, bool)
                                       or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"tasks: {key}.batch_size{at} must be an integer >= 1, "
                             f"got {batch_size!r}")
        timeout = body.get("max_wait_s")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ValueError(f"tasks: {key}.max_wait_s{at} must be a number > 0, "
                             f"got {timeout!r}")
        specs.append(TaskSpec(name, tuple(topics), labels, batch_size,
                              float(timeout) if timeout is not None else None))
    return tuple(specs)
