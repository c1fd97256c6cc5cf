"""Settings of experiment tracking (MLflow): off for the worker unless a URI is configured.

``TRACKING_URI`` wins; unset, MLflow's own ``MLFLOW_TRACKING_URI`` is used (what compose's
``tracking`` profile sets); neither: the worker tracks nothing. ``streamlearner tune`` and
``bench continual --track`` fall back to an embedded SQLite store in their output folder.

>>> TrackingConfig().resolve_uri({})
''
>>> TrackingConfig().resolve_uri({"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
'http://mlflow:5000'
>>> TrackingConfig(uri="sqlite:///t.db").resolve_uri({"MLFLOW_TRACKING_URI": "http://x"})
'sqlite:///t.db'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["TrackingConfig"]


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = field(default="", metadata=_help(
        "MLflow tracking URI (http://host:5000, sqlite:///file.db). Empty: MLFLOW_TRACKING_URI; "
        "neither: the worker tracks nothing (tune and bench use a local SQLite store)."))
    experiment: str = field(default="streamlearner", metadata=_help(
        "MLflow experiment of the worker's and trainer's runs."))
    run_name: str = field(default="", metadata=_help(
        "Name of the worker's run (default: role and KAFKA_APP_ID)."))
    register_model: str = field(default="", metadata=_help(
        "Registered-model name: each version the stability guard promotes is registered "
        "under it (its checkpoint as the artifact). Empty: nothing is registered."))
    queue_size: int = field(default=1000, metadata=_help(
        "Tracking calls waiting for the background thread; beyond it they are dropped and "
        "counted (streamlearner_tracking_dropped_total), never waited for."))
    timeout_s: float = field(default=5.0, metadata=_help(
        "HTTP timeout of one tracking request (no retries: a failure is counted and dropped)."))

    def __post_init__(self) -> None:
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if not self.experiment.strip():
            raise ValueError("experiment must not be empty")

    def resolve_uri(self, environ: Mapping[str, str] | None = None) -> str:
        """The URI to track to ('' = off)."""
        import os

        env = os.environ if environ is None else environ
        return self.uri.strip() or env.get("MLFLOW_TRACKING_URI", "").strip()
