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
    config = base.config.to_json_string(use_diff=False)
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    name = str(getattr(model, "path", "") or getattr(base.config, "_name_or_path", "model"))
    return f"{name.rstrip('/').rsplit('/', 1)[-1]}@{digest}"


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
