"""The update journal: which events every update in the live model's history trained on.

One JSON line per applied update, ``{"version": v, "task": t, "ids": [...], "ts": ...}``,
appended on the model thread right after the update (so its order is the model's order),
and made durable (fsync) before every checkpoint. On start and on rollback the journal is
cut back to the restored version: lines of updates that no checkpoint kept (lost in a
crash, or discarded by a rollback) go, so the file always describes the model that runs.
A line torn by a crash is ignored and removed at the next cut; the lines cut go to
``journal-discarded.jsonl`` (with the version restored), so an operator can tell which
events left the model's history (a crash's are redelivered and trained again; a rollback's
or a damaged checkpoint's fallback's are not).

>>> import tempfile, os
>>> j = UpdateJournal(os.path.join(tempfile.mkdtemp(), "journal.jsonl"))
>>> j.append(1, "feedback", ["a", "b"]); j.append(2, "feedback", ["c"]); j.sync()
>>> j.truncate_after(1)
1
>>> [e["ids"] for e in j.entries()]
[['a', 'b']]
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["UpdateJournal"]

log = logging.getLogger(__name__)


class UpdateJournal:
    """Append-only JSON-lines file; one writer (the model thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.discarded_path = self.path.with_name(self.path.stem + "-discarded.jsonl")
        self._file = None

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def append(self, version: int, task: str, ids: Iterable[str]) -> None:
        line = json.dumps({"version": int(version), "task": task, "ids": list(ids),
                           "ts": round(time.time(), 3)}, ensure_ascii=False)
        f = self._open()
        f.write(line + "\n")
        f.flush()   # in the OS page cache: survives a process kill, not a power cut

    def sync(self) -> None:
        """Durable up to here (call before writing a checkpoint)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def entries(self) -> Iterator[dict]:
        """Complete lines in order; a torn or foreign line is skipped."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("version"), int):
                    yield entry

    def truncate_after(self, version: int) -> int:
        """Keep the lines of updates ``<= version`` (atomically rewritten); returns how many."""
        self.close()
        if not self.path.exists():
            return 0
        entries = list(self.entries())
        kept = [e for e in entries if e["version"] <= version]
        dropped = [e for e in entries if e["version"] > version]
        if dropped:   # which events left the model's history, and when (for operators)
            with open(self.discarded_path, "a", encoding="utf-8") as f:
                for e in dropped:
                    f.write(json.dumps({**e, "discarded_at": round(time.time(), 3),
                                        "restored_version": version}, ensure_ascii=False) + "\n")
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in kept:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(kept)

    def trained_counts(self) -> Counter:
        """``(task, id) -> times trained`` over the whole history (1 everywhere when sound)."""
        counts: Counter = Counter()
        for e in self.entries():
            counts.update((e["task"], i) for i in e["ids"])
        return counts

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
