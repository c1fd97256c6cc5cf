"""Incremental on-disk persistence of a :class:`~lifecycle.join.PendingStore`, checkpointed
with the model.

Why not the whole state in every checkpoint: 100k pending events of 200-byte texts are
~27 MB. Measured on this project's 2 shared CPU cores (``bench/delayed_labels.py
--persist-cost``; numbers in bench/results/delayed_labels/results.md): orjson writes it in
~12 ms + ~20 ms write and fsync, but through the checkpoint's ``extra`` (stdlib json round
trip, then ``indent=2`` in meta.json) it costs ~1 s, and even the orjson rewrite writes
27 MB per checkpoint -- at a checkpoint every ~20 updates (about one per second at full
speed) that is ~27 MB/s of disk writes for state that changes by ~100 KB between two
checkpoints. So the store is a snapshot plus deltas:

    <directory>/gen-00000003/snapshot.json     the whole state when the generation began
    <directory>/gen-00000003/log-000001.jsonl  mutations since the previous file, then meta
    <directory>/gen-00000003/log-000002.jsonl  ...

Each file is written to a temporary name, fsynced and renamed into place. A log file's
first line holds the SHA-256 of the previous file of its generation, so the chain from the
snapshot is verified on restore. :meth:`LabelLog.persist` returns a small reference
``{"format", "gen", "seq", "sha256"}`` (the last file and its checksum) that the caller puts
in the checkpoint's ``extra``; :meth:`LabelLog.restore` rebuilds exactly that state. A
generation is compacted (a new snapshot) when its logs hold more mutations than the live
state has entries (and at least ``compact_min_ops``), so a restore reads at most about twice
the live state, and after every restore (files after the restored reference may belong to a
lost lineage: they are never appended to). Generations are deleted once none of the last
``keep_refs`` references points into them; keep it above ``CHECKPOINT_KEEP_LAST`` so that a
fall-back to an older checkpoint finds its files.

Call :meth:`persist` where nothing mutates the store (the pipeline's ``_save`` runs under
its batch lock): mutations are dropped from the store's log only once their file is
durable, so a failed persist loses nothing; the next one writes them.

>>> import tempfile
>>> from lifecycle.join import JoinConfig, PendingEvent, PendingStore
>>> d = tempfile.mkdtemp()
>>> store, log = PendingStore(JoinConfig()), LabelLog(d)
>>> log.restore(store, None)                     # first start: nothing to restore
>>> _ = store.add_event(PendingEvent("e1", "feedback", "where is my card", ts=0.0))
>>> ref = log.persist(store)                     # -> checkpoint extra["labels"]
>>> again = PendingStore(JoinConfig()); LabelLog(d).restore(again, ref)
>>> again.stats()["pending_events"]
1
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections import deque
from pathlib import Path

import orjson

from learner.checkpoints import _fsync_dir, _write_bytes

from .join import PendingStore

__all__ = ["LabelLog", "LabelLogError"]

log = logging.getLogger(__name__)

FORMAT = 1
_GEN_RE = re.compile(r"^gen-(\d{8,})$")
_SNAPSHOT = "snapshot.json"


class LabelLogError(RuntimeError):
    """The files a reference points to are missing or do not match their checksums."""


def _write(path: Path, data: bytes) -> str:
    """Write ``data`` durably under ``path`` (temporary name, fsync, rename, fsync the
    folder: the checkpoints' own helpers); its SHA-256."""
    tmp = path.with_name(path.name + ".tmp")
    _write_bytes(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


class LabelLog:
    """Writes and restores one store's files in ``directory`` (one writer)."""

    def __init__(self, directory: str | os.PathLike, *, keep_refs: int = 8,
                 compact_min_ops: int = 10_000) -> None:
        if isinstance(keep_refs, bool) or not isinstance(keep_refs, int) or keep_refs < 2:
            raise ValueError(f"keep_refs must be an integer >= 2, got {keep_refs!r}")
        if isinstance(compact_min_ops, bool) or not isinstance(compact_min_ops, int) \
                or compact_min_ops < 1:
            raise ValueError(f"compact_min_ops must be an integer >= 1, got {compact_min_ops!r}")
        self.directory = Path(directory)
        self.keep_refs = keep_refs
        self.compact_min_ops = compact_min_ops
        self._gen: int | None = None   # generation being appended to; None: next is a snapshot
        self._seq = 0
        self._sha = ""
        self._ops_in_gen = 0
        self._refs: deque[dict] = deque(maxlen=keep_refs)
        self.last_persist: dict = {}   # what the last persist wrote (kind, bytes, ops)

    # -- paths --------------------------------------------------------------------------
    def _gen_dir(self, gen: int) -> Path:
        return self.directory / f"gen-{gen:08d}"

    def generations(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir()
                      if (m := _GEN_RE.match(p.name)) and p.is_dir())

    # -- writing --------------------------------------------------------------------------
    def persist(self, store: PendingStore) -> dict:
        """Make the store's current state durable; returns the reference to checkpoint."""
        if store._ops is None:
            raise RuntimeError("restore() (or attach) the store before persisting it")
        live = len(store._pending) + store._early_n + len(store._history)
        if self._gen is None or self._ops_in_gen > max(self.compact_min_ops, live):
            return self._snapshot(store)
        n = len(store._ops)
        header = orjson.dumps({"format": FORMAT, "gen": self._gen, "seq": self._seq + 1,
                               "prev": self._sha})
        lines = [header] + [orjson.dumps(op) for op in store._ops[:n]] \
            + [orjson.dumps({"meta": store._meta()})]
        data = b"\n".join(lines) + b"\n"
        sha = _write(self._gen_dir(self._gen) / f"log-{self._seq + 1:06d}.jsonl", data)
        del store._ops[:n]
        self._seq += 1
        self._sha = sha
        self._ops_in_gen += n
        self.last_persist = {"kind": "log", "bytes": len(data), "ops": n}
        return self._ref()

    def _snapshot(self, store: PendingStore) -> dict:
        gen = max(self.generations(), default=0) + 1
        folder = self._gen_dir(gen)
        folder.mkdir(parents=True, exist_ok=True)
        n = len(store._ops)
        data = orjson.dumps({"format": FORMAT, "gen": gen, "state": store.state_dict()})
        sha = _write(folder / _SNAPSHOT, data)
        del store._ops[:n]   # the snapshot holds their effect
        self._gen, self._seq, self._sha, self._ops_in_gen = gen, 0, sha, 0
        self.last_persist = {"kind": "snapshot", "bytes": len(data), "ops": n}
        return self._ref()

    def _ref(self) -> dict:
        ref = {"format": FORMAT, "gen": self._gen, "seq": self._seq, "sha256": self._sha}
        self._refs.append(ref)
        self._collect()
        return dict(ref)

    def _collect(self) -> None:
        """Delete generations older than every reference kept (once keep_refs were made)."""
        if len(self._refs) < self.keep_refs:
            return
        oldest = min(r["gen"] for r in self._refs)
        for gen in self.generations():
            if gen < oldest:
                shutil.rmtree(self._gen_dir(gen), ignore_errors=True)

    # -- reading --------------------------------------------------------------------------
    def restore(self, store: PendingStore, ref: dict | None) -> None:
        """Load the state ``ref`` names into ``store`` (``None``: a first start, the store
        stays empty) and start logging its mutations. Raises :class:`LabelLogError` when
        the files are missing or damaged: the caller must not start without them, or
        labels of events the checkpoint holds would be lost or trained twice."""
        self._clean_tmp()
        if ref is not None:
            state, ops, meta = self._read(ref)
            store._ops = None
            try:
                store.restore_from(state, ops, meta)
            except ValueError as exc:
                raise LabelLogError(f"label store files of {ref} do not replay: {exc}") from None
            self._refs.append(dict(ref))
        store._ops = []
        self._gen = None   # the next persist starts a new generation (see the module doc)

    def _read(self, ref: dict):
        try:
            gen, seq, want = int(ref["gen"]), int(ref["seq"]), str(ref["sha256"])
            if ref.get("format") != FORMAT:
                raise ValueError(f"format {ref.get('format')!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelLogError(f"not a label-log reference: {ref!r} ({exc})") from None
        folder = self._gen_dir(gen)
        try:
            data = (folder / _SNAPSHOT).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            snap = orjson.loads(data)
            ops: list = []
            meta = None
            for k in range(1, seq + 1):
                data = (folder / f"log-{k:06d}.jsonl").read_bytes()
                lines = data.split(b"\n")[:-1]
                header = orjson.loads(lines[0])
                if header.get("prev") != sha or header.get("seq") != k:
                    raise LabelLogError(f"{folder.name}/log-{k:06d}.jsonl does not follow its "
                                        "predecessor (checksum chain broken)")
                sha = hashlib.sha256(data).hexdigest()
                ops += [orjson.loads(line) for line in lines[1:-1]]
                meta = orjson.loads(lines[-1])["meta"]
        except OSError as exc:
            raise LabelLogError(f"label store files of {ref} are missing: {exc}") from None
        except (ValueError, KeyError, IndexError) as exc:
            raise LabelLogError(f"label store files of {ref} are damaged: {exc!r}") from None
        if sha != want:
            raise LabelLogError(f"label store file {folder.name} seq {seq} does not match the "
                                "checkpoint's checksum")
        return snap["state"], ops, meta

    def _clean_tmp(self) -> None:
        for gen in self.generations():
            for path in self._gen_dir(gen).glob("*.tmp"):
                path.unlink(missing_ok=True)
