"""Model versions: what the trainer publishes and serving replicas load.

A version travels as the *claim-check* pattern: the artifact (safetensors bytes) goes to a
model store addressed by URI (a local directory by default, any fsspec URL such as
``s3://bucket/models`` for users), and a small :class:`VersionRecord` goes on the compacted
``model-versions`` topic: version, labels, artifact URI, size, SHA-256, base encoder, probe
accuracy, time. An artifact small enough (``MODELS_INLINE_MAX_BYTES``) rides inside the
record instead, so head-mode versions need no store at all on the read side.

What an artifact holds depends on the mode: ``head`` the heads (the encoder is the shared,
frozen base every replica loads itself); ``lora`` the adapters and the heads; ``full`` the
whole encoder too. The metadata inside the safetensors header says which, with the labels and
the LoRA shape, so a replica can rebuild the model from its own copy of the base encoder.

Order: ``sequence`` counts publications of one trainer and only grows (it survives restarts:
it is kept in the trainer's checkpoints and re-derived from the topic). Replicas move to a
record with a higher sequence only; a rollback is a record with a *lower* ``version`` but a
higher ``sequence`` and ``kind="rollback"``, which replicas follow like any other.

>>> store = ModelStore("memory://sl-doctest")
>>> uri = store.put("v1", b"bytes")
>>> store.get(uri), uri
(b'bytes', 'memory:///sl-doctest/v1.safetensors')
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

if TYPE_CHECKING:
    from learner.learner import Learner

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
RECORD_SCHEMA = 1
KINDS = ("update", "rollback")


class ArtifactError(ValueError):
    """An artifact that must not be served; ``reason`` is a bounded metric label:
    checksum, unreadable, format, base_model, mode."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VersionRecord:
    """One published model version (the value on ``model-versions``, key: the trainer id)."""

    trainer: str
    sequence: int
    version: int
    kind: str
    mode: str
    base_model: str
    labels: dict[str, list[str]]
    size: int
    sha256: str
    uri: str | None = None
    inline: str | None = None           # base64 artifact bytes when small
    probe_accuracy: dict[str, float] = field(default_factory=dict)
    ts: float = 0.0                      # when it was published (trainer clock)
    schema_version: int = RECORD_SCHEMA

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> "VersionRecord":
        """Parse and check a record; ``ArtifactError("format", ...)`` when it is not one."""
        try:
            d = json.loads(raw)
            if not isinstance(d, dict):
                raise TypeError("not an object")
            record = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError, KeyError) as exc:
            raise ArtifactError("format", f"not a model-version record: {exc}") from None
        problems = []
        if not (type(record.sequence) is int and type(record.version) is int
                and record.sequence >= 0 and record.version >= 0):
            problems.append("sequence/version")
        if record.kind not in KINDS:
            problems.append("kind")
        if not isinstance(record.labels, dict) or not all(
                isinstance(v, list) and all(isinstance(x, str) for x in v)
                for v in record.labels.values()):
            problems.append("labels")
        if not (isinstance(record.sha256, str) and len(record.sha256) == 64):
            problems.append("sha256")
        if (record.uri is None) == (record.inline is None):
            problems.append("exactly one of uri / inline")
        if problems:
            raise ArtifactError("format", "bad model-version record: " + ", ".join(problems))
        return record


def base_model_id(learner_or_model: Any) -> str:
    """Which base encoder a model was built on: its path's last part + its config's hash.
    Replicas refuse an artifact built on another base."""
    model = getattr(learner_or_model, "model", learner_or_model)
    encoder = model.encoder
    base = getattr(encoder, "get_base_model", lambda: encoder)()
    name = str(getattr(model, "path", "") or getattr(base.config, "_name_or_path", "model"))
    # The config's JSON (a deep copy of the config, then a dump) cost 2% of the worker's model
    # thread when every head-mode update built the serving copy's artifact: kept on the model,
    # keyed by what it was computed from.
    key = (id(base.config), name)
    cached = getattr(model, "_base_model_id", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    config = base.config.to_json_string(use_diff=False)
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    ident = f"{name.rstrip('/').rsplit('/', 1)[-1]}@{digest}"
    try:
        model._base_model_id = (key, ident)
    except AttributeError:   # a model that takes no new attributes: computed each time
        pass
    return ident


@dataclass(frozen=True)
class Artifact:
    """A model version's tensors and what is needed to rebuild it over a base encoder."""

    version: int
    mode: str
    base_model: str
    labels: dict[str, list[str]]
    lora: dict
    tensors: dict[str, torch.Tensor]


def artifact_from_learner(learner: "Learner") -> Artifact:
    """Copy what a replica needs of ``learner`` (call it on the learner's thread): the heads,
    plus the adapters (lora) or the whole encoder (full)."""
    from learner.learner import trainable_encoder_state

    mode = learner._mode()
    tensors = {f"encoder.{k}": v for k, v in trainable_encoder_state(learner.model.encoder,
                                                                     mode).items()}
    for task in learner.tasks():
        head = learner.model.head(task)
        tensors[f"head.{task}.weight"] = head.weight.detach().to("cpu", copy=True).contiguous()
        tensors[f"head.{task}.bias"] = head.bias.detach().to("cpu", copy=True).contiguous()
    cfg = learner.config
    return Artifact(version=learner.model_version, mode=mode, base_model=base_model_id(learner),
                    labels={t: learner.labels(t) for t in learner.tasks()},
                    lora={"rank": cfg.lora_rank, "layers": cfg.lora_layers}, tensors=tensors)


def encode_artifact(artifact: Artifact) -> bytes:
    """safetensors bytes with the rest in the header's metadata (never pickle)."""
    meta = {
        "format": str(ARTIFACT_FORMAT),
        "version": str(artifact.version),
        "mode": artifact.mode,
        "labels": json.dumps(artifact.labels),
        "base_model": artifact.base_model,
        "lora": json.dumps(artifact.lora),
    }
    return safetensors.torch.save(artifact.tensors, metadata=meta)


def read_artifact(data: bytes, *, sha256: str | None = None) -> Artifact:
    """Verify (``sha256`` when given) and parse artifact bytes; ``ArtifactError`` otherwise."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ArtifactError("checksum", f"artifact does not match its SHA-256 ({len(data)} bytes)")
    try:
        tensors = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        if meta.get("format") != str(ARTIFACT_FORMAT):
            raise ArtifactError("format", f"artifact format {meta.get('format')!r} is not "
                                          f"{ARTIFACT_FORMAT}")
        labels = json.loads(meta["labels"])
        artifact = Artifact(version=int(meta["version"]), mode=meta["mode"],
                            base_model=meta["base_model"], labels=labels,
                            lora=json.loads(meta.get("lora") or "{}"), tensors=tensors)
    except ArtifactError:
        raise
    except Exception as exc:   # truncated bytes, garbage header, missing keys
        raise ArtifactError("unreadable", f"artifact unreadable: {type(exc).__name__}: {exc}") from None
    for task, names in labels.items():
        weight = tensors.get(f"head.{task}.weight")
        if weight is None or weight.shape[0] != len(names):
            raise ArtifactError("format", f"artifact head of task {task!r} does not match its labels")
    return artifact


class ModelStore:
    """Artifacts under one fsspec URL (``file:///var/models``, ``s3://bucket/prefix``, a plain
    path). Each artifact is written under a fresh name and never changed; the record that
    names it is published only after the write completed, so a reader never sees half of one.
    """

    def __init__(self, url: str, *, storage_options: dict | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))

    def _uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def put(self, name: str, data: bytes) -> str:
        """Write ``data`` as ``<root>/<name>.safetensors``; returns its URI."""
        final = f"{self.root}/{name}.safetensors"
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, final)
        return self._uri(final)

    def get(self, uri: str) -> bytes:
        import fsspec

        with fsspec.open(uri, "rb") as f:
            return f.read()

    def list(self) -> list[str]:
        """Artifact paths, oldest name first (names sort by version and sequence)."""
        try:
            names = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if str(n).endswith(".safetensors"))

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` artifacts; returns how many went."""
        paths = self.list()
        old = paths[:-keep] if keep > 0 else paths
        for path in old:
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                pass
        return len(old)


def artifact_name(trainer: str, version: int, sequence: int, sha256: str) -> str:
    return f"{trainer}/s{sequence:010d}-v{version:012d}-{sha256[:12]}"


def make_record(*, trainer: str, sequence: int, learner_version: int, kind: str, mode: str,
                base_model: str, labels: dict[str, list[str]], data: bytes,
                store: ModelStore | None, inline_max_bytes: int,
                probe_accuracy: dict[str, float] | None = None) -> VersionRecord:
    """Write the artifact (store, or inline when small) and describe it."""
    sha = hashlib.sha256(data).hexdigest()
    uri = inline = None
    if len(data) <= inline_max_bytes or store is None:
        if len(data) > inline_max_bytes:
            raise ValueError(f"artifact of {len(data)} bytes is above MODELS_INLINE_MAX_BYTES "
                             f"({inline_max_bytes}) and no model store is configured")
        inline = base64.b64encode(data).decode("ascii")
    else:
        uri = store.put(artifact_name(trainer, learner_version, sequence, sha), data)
    return VersionRecord(trainer=trainer, sequence=sequence, version=learner_version, kind=kind,
                         mode=mode, base_model=base_model, labels=labels, size=len(data),
                         sha256=sha, uri=uri, inline=inline,
                         probe_accuracy=dict(probe_accuracy or {}), ts=time.time())


def fetch(record: VersionRecord, store: ModelStore | None = None) -> bytes:
    """The artifact bytes a record points at (``ArtifactError("unreadable")`` if gone)."""
    if record.inline is not None:
        try:
            return base64.b64decode(record.inline, validate=True)
        except (ValueError, TypeError) as exc:
            raise ArtifactError("unreadable", f"inline artifact is not base64: {exc}") from None
    try:
        if store is not None:
            return store.get(record.uri)
        import fsspec

        with fsspec.open(record.uri, "rb") as f:
            return f.read()
    except Exception as exc:
        raise ArtifactError("unreadable", f"cannot read {record.uri}: {type(exc).__name__}: "
                                          f"{exc}") from None


class VersionPublisher:
    """Publishes the trainer's model versions.

    ``local`` (the all-in-one worker's serving copy) gets every version as an
    :class:`Artifact`, inline in the batch path: right after each update in head mode (a copy
    of the heads, so the next batch is predicted by the version that learned the last one) and
    at the cadence in lora/full mode. ``send`` (the model-versions topic, through an
    ``Output``) gets a :class:`VersionRecord` at the cadence, its artifact in ``store`` or
    inline — in a background task, never on the batch path: a slow store or topic never slows
    learning. One publication runs at a time; the next one starts once it is done and due
    again. A failed publication is logged and counted, and the next one supersedes it:
    versions are derived state, no event is lost with one.
    """

    def __init__(self, config, *, trainer_id: str, thread, metrics=None,
                 store: ModelStore | None = None, send=None, local=None) -> None:
        self.config = config
        self.trainer_id = trainer_id
        self.thread = thread
        self.metrics = metrics
        self.store = store
        self.send = send          # async (key: str, value: bytes) -> None
        self.local = local        # async (artifact: Artifact, published_ts: float) -> None
        self.sequence = 0         # of the last record published (0: none yet)
        self.published_version: int | None = None
        self.last_record: VersionRecord | None = None
        self._last_publish = float("-inf")
        self._last_local = float("-inf")
        self._updates = 0         # since the last topic publication
        self._local_updates = 0   # since the last local refresh
        self.local_version: int | None = None   # of the local serving copy
        self._task = None         # the publication in flight
        self._queued = None       # an announcement waiting for it

    # -- state (travels in the trainer's checkpoints) --------------------------------------
    def state_dict(self) -> dict:
        return {"sequence": self.sequence}

    def load_state_dict(self, state: dict) -> None:
        self.sequence = max(self.sequence, int(state.get("sequence", 0)))

    def resume_after(self, record: VersionRecord | None) -> None:
        """Continue after the newest record already on the topic (it may be newer than the
        restored checkpoint: published before a crash)."""
        if record is not None and record.trainer == self.trainer_id:
            self.sequence = max(self.sequence, record.sequence)
            self.last_record = record

    # -- publishing -----------------------------------------------------------------------
    def _due(self, last: float, updates: int) -> bool:
        cfg = self.config
        if time.monotonic() - last >= cfg.publish_every_s:
            return True
        return cfg.publish_every_updates > 0 and updates >= cfg.publish_every_updates

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def refreshes_every_update(self, learner: "Learner") -> bool:
        """The local serving copy follows every update (head mode: a copy of the heads)."""
        return self.local is not None and learner.config.frozen

    async def after_update(self, learner: "Learner", *, artifact: Artifact | None = None) -> None:
        """Call after each applied update, in the batch path (under the trainer's lock).
        ``artifact``: the live version's, when the update job built it already."""
        self._updates += 1
        self._local_updates += 1
        if self.refreshes_every_update(learner) or (
                self.local is not None and self._due(self._last_local, self._local_updates)):
            await self.refresh_local(learner, artifact)
        if self.send is not None and not self.busy and self._due(self._last_publish,
                                                                   self._updates):
            self._start(learner, "update")

    async def refresh_local(self, learner: "Learner", artifact: Artifact | None = None) -> None:
        if artifact is None or artifact.version != learner.model_version:   # e.g. rolled back
            artifact = await self.thread.run(artifact_from_learner, learner)
        await self.local(artifact, time.time())
        self.local_version = artifact.version
        self._last_local = time.monotonic()
        self._local_updates = 0

    async def announce(self, learner: "Learner", kind: str = "update",
                       probe_accuracy: dict[str, float] | None = None) -> None:
        """Publish now, whatever the cadence (start, rollback): the local copy at once, the
        topic after any publication in flight (awaited: a rollback must reach replicas)."""
        if self.local is not None:
            await self.refresh_local(learner)
        if self.send is not None:
            if self.busy:   # after the one in flight, never instead of it
                self._queued = (learner, kind, probe_accuracy)
            else:
                self._start(learner, kind, probe_accuracy)

    def _local_behind(self, learner: "Learner") -> bool:
        return self.local is not None and self.local_version != learner.model_version

    def _topic_behind(self, learner: "Learner") -> bool:
        return (self.send is not None and not self.busy and self._queued is None
                and self.published_version != learner.model_version)

    def behind(self, learner: "Learner") -> bool:
        """The local copy or the topic has not seen the live version (and nothing is on its
        way): the last updates fell between two cadence ticks."""
        return self._local_behind(learner) or self._topic_behind(learner)

    async def flush(self, learner: "Learner") -> None:
        """Bring the local copy and the topic to the live version (idle, drain)."""
        if self._local_behind(learner):
            await self.refresh_local(learner)
        if self._topic_behind(learner):
            self._start(learner, "update")

    async def wait(self) -> None:
        """Until the publication in flight (if any) is done."""
        import asyncio

        if self._task is not None:
            await asyncio.shield(self._task)

    def _start(self, learner: "Learner", kind: str,
               probe_accuracy: dict[str, float] | None = None) -> None:
        import asyncio

        self._updates = 0
        self._last_publish = time.monotonic()
        self._task = asyncio.ensure_future(self._publish(learner, kind, probe_accuracy))

    async def _publish(self, learner: "Learner", kind: str,
                       probe_accuracy: dict[str, float] | None) -> VersionRecord | None:
        try:
            return await self._publish_once(learner, kind, probe_accuracy)
        finally:
            queued, self._queued = self._queued, None
            if queued is not None:
                self._start(*queued)

    async def _publish_once(self, learner: "Learner", kind: str,
                            probe_accuracy: dict[str, float] | None) -> VersionRecord | None:
        import asyncio

        started = time.perf_counter()
        try:
            artifact = await self.thread.run(artifact_from_learner, learner)
            data = await self.thread.run(encode_artifact, artifact)
            self.sequence += 1
            record = await asyncio.to_thread(
                make_record, trainer=self.trainer_id, sequence=self.sequence,
                learner_version=artifact.version, kind=kind, mode=artifact.mode,
                base_model=artifact.base_model, labels=artifact.labels, data=data,
                store=self.store, inline_max_bytes=self.config.inline_max_bytes,
                probe_accuracy=probe_accuracy)
            await self.send(self.trainer_id, record.to_json())
        except Exception:
            if self.metrics is not None:
                self.metrics.publish_failures.inc()
            log.exception("publishing model version %d failed; the next publication "
                          "supersedes it", learner.model_version)
            return None
        self.published_version = record.version
        self.last_record = record
        if self.metrics is not None:
            self.metrics.publish_duration.observe(time.perf_counter() - started)
            self.metrics.artifact_bytes.set(record.size)
            self.metrics.published_version.set(record.version)
        if self.store is not None and record.uri is not None:
            try:
                await asyncio.to_thread(self.store.prune, self.config.keep)
            except Exception:
                log.warning("pruning the model store failed", exc_info=True)
        log.debug("published model version %d (sequence %d, %d bytes, %s)", record.version,
                  record.sequence, record.size, "inline" if record.inline else record.uri)
        return record
