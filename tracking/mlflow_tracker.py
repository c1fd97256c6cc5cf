"""MLflow tracking off the hot path: every call is queued for one background thread.

A caller (the trainer's publication hook, a tuning trial, a benchmark run) never waits for
MLflow: :meth:`Tracker.start_run` and the :class:`Run` methods put the call on a bounded
queue and return at once. When the queue is full the call is dropped and counted
(``streamlearner_tracking_dropped_total``); a call that fails (server down, refused,
timeout: one try, no retries) is counted by operation (``streamlearner_tracking_failures_total``)
and logged at most once a minute. A dead tracking server therefore costs learning nothing
but the lost records. A run whose creation failed is created by its next call that gets
through, so tracking resumes when the server comes back.

>>> class Client:                                     # any object with MlflowClient's methods
...     def __init__(self): self.logged = []
...     def get_experiment_by_name(self, name): return None
...     def create_experiment(self, name, artifact_location=None): return "1"
...     def create_run(self, experiment_id, run_name=None, tags=None):
...         return type("R", (), {"info": type("I", (), {"run_id": "r1"})})
...     def log_batch(self, run_id, metrics=(), params=(), tags=()):
...         self.logged += [(m.key, m.value, m.step) for m in metrics]
...     def set_terminated(self, run_id, status=None): self.logged.append(status)
>>> client = Client()
>>> tracker = Tracker("memory:", client=client)
>>> run = tracker.start_run("demo", params={"lr": 0.01})
>>> run.log_metrics({"accuracy": 0.9}, step=3)
True
>>> run.end()
True
>>> tracker.close()
True
>>> client.logged
[('accuracy', 0.9, 3), 'FINISHED']
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

__all__ = ["OPS", "Run", "Tracker", "TrackingMetrics"]

OPS = ("start_run", "log", "artifact", "register", "end_run")
_WARN_EVERY_S = 60.0
_MAX_PARAM_CHARS = 6000    # MLflow's limit on a parameter value
_BATCH = 900               # metrics per log_batch call (MLflow takes at most 1000)


class TrackingMetrics:
    """The tracker's counters, on the worker's registry (pre-initialised per operation)."""

    def __init__(self, registry=None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        self.failures = Counter("streamlearner_tracking_failures_total",
                                "Tracking calls that failed (server down, refused, timeout).",
                                ["op"], registry=self.registry)
        self.calls = Counter("streamlearner_tracking_calls_total",
                             "Tracking calls delivered to the tracking server.", ["op"],
                             registry=self.registry)
        self.dropped = Counter("streamlearner_tracking_dropped_total",
                               "Tracking calls dropped because the queue was full.",
                               registry=self.registry)
        self.queued = Gauge("streamlearner_tracking_queue_calls",
                            "Tracking calls waiting for the background thread.",
                            registry=self.registry)
        for op in OPS:
            self.failures.labels(op=op)
            self.calls.labels(op=op)


class Run:
    """A handle on one MLflow run; every method queues and returns whether it was queued."""

    def __init__(self, tracker: "Tracker", key: int) -> None:
        self._tracker = tracker
        self.key = key

    @property
    def run_id(self) -> str | None:
        """The MLflow run id once the background thread created it (see :meth:`Tracker.flush`)."""
        return self._tracker._run_ids.get(self.key)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> bool:
        values = {str(k): float(v) for k, v in metrics.items() if v is not None and v == v}
        return self._tracker._put("log", self.key, metrics=values, step=int(step),
                                  ts=int(time.time() * 1000))

    def log_params(self, params: Mapping[str, Any]) -> bool:
        return self._tracker._put("log", self.key, params=dict(params))

    def set_tags(self, tags: Mapping[str, Any]) -> bool:
        return self._tracker._put("log", self.key, tags=dict(tags))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        """A file or a whole directory."""
        return self._tracker._put("artifact", self.key, path=str(path), artifact_path=artifact_path)

    def register(self, model_name: str, path: Callable[[], str | Path | None] | str | Path,
                 artifact_path: str, tags: Mapping[str, Any] | None = None) -> bool:
        """Upload ``path`` (a directory, or a callable giving it in the background) as
        ``artifact_path`` and register it as a new version of ``model_name``."""
        return self._tracker._put("register", self.key, model=model_name, path=path,
                                  artifact_path=artifact_path, tags=dict(tags or {}))

    def end(self, status: str = "FINISHED") -> bool:
        return self._tracker._put("end_run", self.key, status=status)


class Tracker:
    """One background thread and a bounded queue in front of an ``MlflowClient`` for ``uri``.

    ``artifact_location``: where a new experiment keeps artifacts (for a local SQLite store;
    a server decides for itself). ``client``: an MlflowClient-like object (tests).
    """

    def __init__(self, uri: str, *, experiment: str = "streamlearner", registry=None,
                 metrics: TrackingMetrics | None = None, queue_size: int = 1000,
                 timeout_s: float = 5.0, artifact_location: str | None = None,
                 client=None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.metrics = metrics if metrics is not None else TrackingMetrics(registry)
        # One try per call, bounded: MLflow's default retries back off for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
        self._client = client
        self._experiment_id: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._keys = itertools.count(1)
        self._run_ids: dict[int, str] = {}
        self._run_specs: dict[int, dict] = {}
        self._last_warning: dict[str, float] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="streamlearner-tracking",
                                        daemon=True)
        self._thread.start()

    # -- the caller's side (never blocks) ---------------------------------------------------
    def start_run(self, name: str | None = None, *, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None, parent: Run | None = None) -> Run:
        key = next(self._keys)
        run = Run(self, key)
        self._put("start_run", key, name=name, tags=dict(tags or {}),
                  parent=parent.key if parent is not None else None)
        if params:
            run.log_params(params)
        return run

    def _put(self, op: str, key: int, **kwargs) -> bool:
        if self._closed:
            return False
        try:
            self._queue.put_nowait((op, key, kwargs))
        except queue.Full:
            self.metrics.dropped.inc()
            return False
        self.metrics.queued.set(self._queue.qsize())
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call queued so far was tried; False on timeout (or a full queue)."""
        done = threading.Event()
        try:
            self._queue.put(("flush", 0, {"event": done}), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (at most ``timeout`` seconds) and stop the thread; later calls are ignored."""
        flushed = self.flush(timeout) if self._thread.is_alive() else True
        self._closed = True
        try:
            self._queue.put_nowait(("stop", 0, {}))
        except queue.Full:
            pass
        self._thread.join(timeout=1.0)
        return flushed

    # -- the background thread --------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            op, key, kwargs = self._queue.get()
            self.metrics.queued.set(self._queue.qsize())
            if op == "stop":
                return
            if op == "flush":
                kwargs["event"].set()
                continue
            try:
                getattr(self, f"_do_{op}")(key, **kwargs)
            except Exception as exc:   # a tracking failure never reaches the caller
                self.metrics.failures.labels(op=op).inc()
                self._warn(op, exc)
            else:
                self.metrics.calls.labels(op=op).inc()

    def _warn(self, op: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(op, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last_warning[op] = now
            log.warning("tracking %s to %s failed (counted; learning goes on): %s: %s", op,
                        self.uri, type(exc).__name__, str(exc)[:300])

    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                try:
                    self._experiment_id = client.create_experiment(
                        self.experiment, artifact_location=self.artifact_location)
                except Exception:   # created meanwhile by another process
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
                    self._experiment_id = found.experiment_id
        return self._experiment_id

    def _run(self, key: int) -> str:
        run_id = self._run_ids.get(key)
        if run_id is None:   # never created (or its creation failed): create it now
            spec = self._run_specs.get(key, {})
            tags = {k: str(v) for k, v in spec.get("tags", {}).items()}
            parent = spec.get("parent")
            if parent is not None and parent in self._run_ids:
                tags["mlflow.parentRunId"] = self._run_ids[parent]
            run = self.client().create_run(self._experiment(), run_name=spec.get("name"),
                                           tags=tags)
            run_id = self._run_ids[key] = run.info.run_id
        return run_id

    def _do_start_run(self, key: int, *, name, tags, parent) -> None:
        self._run_specs[key] = {"name": name, "tags": tags, "parent": parent}
        self._run(key)

    def _do_log(self, key: int, *, metrics=None, step=0, ts=None, params=None, tags=None) -> None:
        run_id = self._run(key)
        from mlflow.entities import Metric, Param, RunTag

        ts = ts or int(time.time() * 1000)
        ms = [Metric(k, v, ts, step) for k, v in (metrics or {}).items()]
        ps = [Param(str(k), str(v)[:_MAX_PARAM_CHARS]) for k, v in (params or {}).items()]
        tg = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(ms), 1), _BATCH):
            first = i == 0
            self.client().log_batch(run_id, metrics=ms[i : i + _BATCH],
                                    params=ps if first else [], tags=tg if first else [])

    def _do_artifact(self, key: int, *, path: str, artifact_path: str | None) -> None:
        run_id = self._run(key)
        if Path(path).is_dir():
            self.client().log_artifacts(run_id, path, artifact_path)
        else:
            self.client().log_artifact(run_id, path, artifact_path)

    def _do_register(self, key: int, *, model: str, path, artifact_path: str, tags) -> None:
        run_id = self._run(key)
        local = path() if callable(path) else path
        if local is None:
            raise FileNotFoundError("nothing to register: no artifact")
        client = self.client()
        client.log_artifacts(run_id, str(local), artifact_path)
        try:
            client.create_registered_model(model)
        except Exception as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        client.create_model_version(model, source, run_id=run_id,
                                    tags={k: str(v) for k, v in tags.items()})

    def _do_end_run(self, key: int, *, status: str) -> None:
        self.client().set_terminated(self._run(key), status=status)
