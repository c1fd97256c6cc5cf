"""Atomic, checksummed checkpoints of a :class:`~learner.learner.Learner`.

Layout, one directory per model version::

    <directory>/ckpt-000000001234/
        model.safetensors   encoder + merged head tensors (never pickle)
        memory.json         replay memory state
        meta.json           learner metadata, format_version, created_at, extra, checksums

A checkpoint is written in a hidden temp directory next to the others, fsynced, then
renamed into place, so a ``ckpt-*`` name only ever points at a complete checkpoint.
One writer per directory: a manager removes the leftovers of crashed saves it finds.

>>> manager = CheckpointManager("var/checkpoints", keep_last=3)    # doctest: +SKIP
>>> extra = manager.load_latest(learner)  # None on the first start  # doctest: +SKIP
>>> manager.save(learner, extra={"offsets": {"feedback-0": 42}})  # doctest: +SKIP
PosixPath('var/checkpoints/ckpt-000000000017')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["CheckpointError", "CheckpointManager", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^ckpt-(\d{12,})$")
_TMP_PREFIX = ".tmp-ckpt-"      # being written
_SWAP_PREFIX = ".swap-"         # a same-version checkpoint moved aside while replaced
_DELETE_PREFIX = ".delete-"     # a pruned checkpoint being removed
_MODEL, _MEMORY, _META = "model.safetensors", "memory.json", "meta.json"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them could be loaded."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes renames inside `path` durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class CheckpointManager:
    """Saves, lists, prunes and restores checkpoints in ``directory``."""

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
            raise ValueError(f"keep_last must be an int > 0, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    # ------------------------------------------------------------------------ listing

    def list(self) -> list[Path]:
        """Complete checkpoints, newest (highest model version) first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME_RE.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found, reverse=True)]

    def latest(self) -> Path | None:
        """Newest checkpoint by name; :meth:`load_latest` also verifies it."""
        checkpoints = self.list()
        return checkpoints[0] if checkpoints else None

    # ------------------------------------------------------------------------- saving

    def save(self, learner: Learner, *, extra: dict | None = None) -> Path:
        """Write ``ckpt-{model_version:012d}/`` atomically, then keep the newest ``keep_last``.

        ``extra`` is opaque JSON from the caller (e.g. the stream's dedup state and
        offsets), handed back by :meth:`load_latest`. An existing checkpoint of the
        same version is replaced.
        """
        try:
            extra_json = json.loads(json.dumps(extra, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra must be JSON-serialisable: {e}") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._recover()
        version = learner.model_version
        newest = self.latest()
        if newest is not None and int(_NAME_RE.match(newest.name).group(1)) > version:
            log.warning("saving version %d below the newest checkpoint %s; load_latest will prefer the latter",
                        version, newest.name)
        final = self.directory / f"ckpt-{version:012d}"

        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.directory))
        try:
            safetensors.torch.save_file(
                learner.state_dict(), str(tmp / _MODEL), metadata={"format": "pt", "model_version": str(version)}
            )
            _fsync_file(tmp / _MODEL)
            _write_bytes(tmp / _MEMORY, json.dumps(learner.replay.state_dict(), allow_nan=False).encode())
            meta = {
                **learner.metadata(),
                "format_version": FORMAT_VERSION,
                "created_at": datetime.now(timezone.utc).isoformat(),
                "extra": extra_json,
                "checksums": {name: _sha256(tmp / name) for name in (_MODEL, _MEMORY)},
            }
            _write_bytes(tmp / _META, json.dumps(meta, indent=2, allow_nan=False).encode())
            _fsync_dir(tmp)
            self._publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.directory)
        self._prune(keep=final)
        return final

    def _publish(self, tmp: Path, final: Path) -> None:
        if not final.exists():
            os.replace(tmp, final)
            return
        # A directory cannot be atomically renamed over a non-empty one: move the old one
        # aside under a hidden name first (restored by _recover if we die in between).
        aside = self.directory / f"{_SWAP_PREFIX}{final.name}.{uuid.uuid4().hex}"
        os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)

    def _prune(self, keep: Path) -> None:
        for path in self.list()[self.keep_last :]:
            if path == keep:  # never delete what was just written, even if versions went back
                continue
            self._remove(path)

    def _remove(self, path: Path) -> None:
        # Rename first: a half-deleted checkpoint must not stay visible under its ckpt-* name.
        doomed = self.directory / f"{_DELETE_PREFIX}{path.name}.{uuid.uuid4().hex}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _recover(self) -> None:
        """Clean up after a crashed save or prune (single writer per directory)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            name = path.name
            if name.startswith(_SWAP_PREFIX):
                original = self.directory / name[len(_SWAP_PREFIX) :].rsplit(".", 1)[0]
                if not original.exists():
                    log.warning("restoring checkpoint %s left aside by an interrupted save", original.name)
                    os.replace(path, original)
                    continue
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith((_TMP_PREFIX, _DELETE_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------------ loading

    def read(self, path: str | Path) -> tuple[dict, dict, dict]:
        """``(state, metadata, memory_state)`` of one checkpoint, checksums verified.

        Raises ``ValueError`` (or ``OSError``) when the checkpoint is incomplete or corrupt.
        """
        path = Path(path)
        meta = json.loads((path / _META).read_bytes())
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {meta.get('format_version')!r}")
        checksums = meta.get("checksums") or {}
        blobs = {}
        for name in (_MODEL, _MEMORY):
            blob = (path / name).read_bytes()
            if hashlib.sha256(blob).hexdigest() != checksums.get(name):
                raise ValueError(f"{name} does not match its checksum")
            blobs[name] = blob
        state = safetensors.torch.load(blobs[_MODEL])  # tensors on CPU; no pickle involved
        memory_state = json.loads(blobs[_MEMORY])
        return state, meta, memory_state

    def version_of(self, path: str | Path) -> int:
        return int(_NAME_RE.match(Path(path).name).group(1))

    def find(self, version: int) -> Path | None:
        """The checkpoint of ``version`` in this directory, if kept."""
        path = self.directory / f"ckpt-{int(version):012d}"
        return path if path.is_dir() else None

    def extra_of(self, path: str | Path) -> dict | None:
        """The caller's ``extra`` of one checkpoint (its meta.json only; not verified)."""
        try:
            meta = json.loads((Path(path) / _META).read_bytes())
        except (OSError, ValueError):
            return None
        return meta.get("extra") if isinstance(meta, dict) else None

    def load(self, path: str | Path, learner: Learner) -> dict | None:
        """Load one checkpoint (checksums verified) into ``learner``; returns its ``extra``.
        Raises ``ValueError``/``OSError`` and leaves the learner unchanged when it is bad."""
        state, meta, memory_state = self.read(path)
        learner.load(state, meta, memory_state)
        return meta.get("extra")

    def discard_newer(self, version: int, into: str | Path) -> list[Path]:
        """Move checkpoints newer than ``version`` to ``into`` (a rollback's discarded
        lineage: the next start must not resume from them); returns their new paths."""
        moved = []
        into = Path(into)
        for path in self.list():
            if self.version_of(path) <= version:
                continue
            into.mkdir(parents=True, exist_ok=True)
            target = into / path.name
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
            moved.append(target)
        if moved:
            _fsync_dir(self.directory)
        return moved

    def load_latest(self, learner: Learner) -> dict | None:
        """Load the newest loadable checkpoint into ``learner`` and return its ``extra``.

        Returns None when the directory holds no checkpoint. A corrupt, truncated or
        incompatible checkpoint is skipped with a warning in favour of the previous one;
        if checkpoints exist but none loads, raises :class:`CheckpointError` rather than
        let the caller silently start from scratch.
        """
        self._recover()
        checkpoints = self.list()
        if not checkpoints:
            return None
        reasons = []
        for path in checkpoints:
            try:
                state, meta, memory_state = self.read(path)
                learner.load(state, meta, memory_state)
            except Exception as e:  # noqa: BLE001 - any failure means: try the previous one
                reasons.append(f"{path.name}: {type(e).__name__}: {e}")
                log.warning("skipping checkpoint %s: %s: %s", path, type(e).__name__, e)
                continue
            return meta.get("extra")
        raise CheckpointError(f"no loadable checkpoint in {self.directory}: " + "; ".join(reasons))
