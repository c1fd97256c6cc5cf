"""Rollback: serve a kept model version again. One implementation, online and offline.

:func:`rearrange` makes ``version`` the newest checkpoint under ``CHECKPOINT_DIR``: the kept
copy (main folder, champion, pre-drift point or a discarded lineage) is copied back with the
newest dedup ids and probe sets as its ``extra`` (the discarded updates' events are not trained
again), newer checkpoints move to ``discarded/``, a newer champion too, and the update journal
is cut back. Offline (``streamlearner rollback --offline``, the trainer stopped) that is all:
the next start resumes there. Online, the trainer does it under its batch lock and then loads
the returned checkpoint into the live learner (``lifecycle/trainer.py``).

>>> kinds = [k for k, _ in CheckpointLayout("d").kept()]
>>> kinds
['checkpoint', 'champion', 'pre-drift', 'discarded']
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lifecycle.journal import UpdateJournal
from lifecycle.layout import CheckpointLayout

__all__ = ["find_kept", "kept_versions", "rearrange"]


def _managers(layout: CheckpointLayout):
    from learner.checkpoints import CheckpointManager

    return [(kind, CheckpointManager(path)) for kind, path in layout.kept()]


def kept_versions(root: str | Path) -> list[dict]:
    """Every version a rollback can go to under ``root`` (CHECKPOINT_DIR), newest first."""
    out = [{"version": manager.version_of(path), "kind": kind, "path": str(path)}
           for kind, manager in _managers(CheckpointLayout(root)) for path in manager.list()]
    return sorted(out, key=lambda v: -v["version"])


def find_kept(root: str | Path, version: int) -> Path | None:
    """The checkpoint of ``version`` in the first kept folder that has it."""
    for _, manager in _managers(CheckpointLayout(root)):
        if (path := manager.find(version)) is not None:
            return path
    return None


def rearrange(root: str | Path, version: int | None, *, keep_last: int,
              extra: dict | None = None) -> Path:
    """Make the checkpoint of ``version`` (the champion's when None) the newest one; returns it.

    ``extra`` (dedup ids, probe sets) replaces the kept copy's; None keeps the newest
    checkpoint's, so an offline rollback keeps what the stopped trainer had seen.
    ``LookupError`` when no kept folder has that version."""
    from learner.checkpoints import CheckpointManager

    layout = CheckpointLayout(root)
    main = CheckpointManager(layout.checkpoints, keep_last=keep_last)
    if version is None:
        champion = CheckpointManager(layout.champion).latest()
        if champion is None:
            raise LookupError("no champion yet")
        source = champion
        version = CheckpointManager(layout.champion).version_of(champion)
    else:
        source = find_kept(root, version)
        if source is None:
            raise LookupError(f"no kept checkpoint of version {version} under {layout.root}")
    if extra is None:
        newest = main.latest()
        extra = main.extra_of(newest) if newest is not None else None
    # Copy first (the source may be the very folder that is about to move aside).
    tmp = layout.checkpoints / f".tmp-rollback-{source.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if extra is not None:
        meta_path = tmp / "meta.json"
        meta = json.loads(meta_path.read_bytes())
        meta["extra"] = extra
        meta_path.write_text(json.dumps(meta, indent=2))
    main.discard_newer(version - 1, layout.discarded)   # also moves a same-version one aside
    target = layout.checkpoints / source.name
    os.replace(tmp, target)
    champion = CheckpointManager(layout.champion)
    if (latest := champion.latest()) is not None and champion.version_of(latest) > version:
        champion.discard_newer(version, layout.discarded)
    UpdateJournal(layout.journal).truncate_after(version)
    return target
