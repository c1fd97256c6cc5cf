"""``streamlearner versions`` / ``streamlearner rollback``: the operator's side of rollbacks.

Online (a worker runs): the command calls the worker's admin API with the bearer token from
``SERVE_ADMIN_TOKEN``. Offline (``--offline``, the worker is stopped): the checkpoint folder
is rearranged so that the next start resumes at the chosen version — newer checkpoints move
to ``discarded/``, a version kept elsewhere (champion, pre-drift, discarded) is copied back
with the newest dedup ids and probe sets, and the update journal is cut back.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from streams.settings import Settings

# Where a kept version can be: kind -> folder under CHECKPOINT_DIR ("" is the folder itself).
FOLDERS = (("checkpoint", ""), ("champion", "champion"), ("pre-drift", "pre-drift"),
           ("discarded", "discarded"))


def _managers(base: str | Path):
    from learner.checkpoints import CheckpointManager

    base = Path(base)
    return [(kind, CheckpointManager(base / folder if folder else base)) for kind, folder in FOLDERS]


def kept_versions(base: str | Path) -> list[dict]:
    """Every version a rollback can go to under ``base`` (CHECKPOINT_DIR), newest first."""
    out = [{"version": manager.version_of(path), "kind": kind, "path": str(path)}
           for kind, manager in _managers(base) for path in manager.list()]
    return sorted(out, key=lambda v: -v["version"])


def find_kept(base: str | Path, version: int) -> Path | None:
    """The checkpoint of ``version`` in the first of FOLDERS that keeps it."""
    for _, manager in _managers(base):
        if (path := manager.find(version)) is not None:
            return path
    return None


def admin_request(url: str, path: str, token: str | None, body: dict | None = None,
                  timeout: float = 120.0) -> tuple[int, dict]:
    """``(status, json)`` of one admin call; the token goes in the Authorization header only."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data,
                                     method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {"error": "http_error", "message": str(e)}


def local_versions(settings: Settings) -> list[dict]:
    return kept_versions(settings.checkpoint.dir)


def rollback_offline(settings: Settings, version: int) -> Path:
    """Make ``version`` the checkpoint the next worker start loads; returns its path."""
    from learner.checkpoints import CheckpointManager
    from streams.journal import UpdateJournal

    base = Path(settings.checkpoint.dir)
    main = CheckpointManager(base, keep_last=settings.checkpoint.keep_last)
    source = find_kept(base, version)
    if source is None:
        raise LookupError(f"no kept checkpoint of version {version} under {base}")
    newest = main.latest()
    current_extra = main.extra_of(newest) if newest is not None else None
    target = base / source.name
    discarded = base / "discarded"
    if source.parent != base:
        tmp = base / f".tmp-rollback-{source.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        if current_extra:   # keep the newest dedup ids and probe sets, as an online rollback does
            meta_path = tmp / "meta.json"
            meta = json.loads(meta_path.read_bytes())
            meta["extra"] = current_extra
            meta_path.write_text(json.dumps(meta, indent=2))
        main.discard_newer(version - 1, discarded)   # also moves a same-version one aside
        tmp.rename(target)
    else:
        main.discard_newer(version, discarded)
    champion = CheckpointManager(base / "champion")
    if (latest := champion.latest()) is not None and champion.version_of(latest) > version:
        champion.discard_newer(version, discarded)
    UpdateJournal(base / "journal.jsonl").truncate_after(version)
    return target
