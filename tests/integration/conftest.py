"""Real components: the embedded Kafka-protocol broker (Tansu) and worker processes
running the real bundled MiniLM encoder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tools.broker import EmbeddedBroker, free_port
from tools.demo import wait_http
from streams.topics import create_topics

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as b:
        yield b


class WorkerProc:
    """One role process (``worker`` by default, or ``serve`` / ``train``)."""

    def __init__(self, env: dict[str, str], log_path: Path, role: str = "worker"):
        self.env = env
        self.log_path = log_path
        self.role = role
        self.port = int(env["METRICS_PORT"])
        self.proc: subprocess.Popen | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout: float = 180) -> "WorkerProc":
        full = dict(os.environ)
        full.update(self.env)
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlearner.cli", self.role], env=full,
                                     cwd=ROOT, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout, self.proc)
        except Exception:
            self.kill()
            raise RuntimeError(f"worker did not start:\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 90) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"worker ignored SIGTERM:\n{self.log_tail()}")
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture
def worker_env(broker, tmp_path):
    """Settings for one test: unique app id and topics, short timeouts, own checkpoint dir."""
    uid = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP": broker.bootstrap,
        "KAFKA_APP_ID": f"sltest-{uid}",
        "KAFKA_FEEDBACK_TOPIC": f"customer-feedback-{uid}",
        "KAFKA_MARKET_TOPIC": f"market-events-{uid}",
        "KAFKA_PREDICTIONS_TOPIC": f"predictions-{uid}",
        "KAFKA_DEAD_LETTER_TOPIC": f"dead-letters-{uid}",
        "KAFKA_DRIFT_TOPIC": f"drift-alerts-{uid}",
        "KAFKA_EXPLANATIONS_TOPIC": f"explanations-{uid}",
        "KAFKA_MODEL_EVENTS_TOPIC": f"model-events-{uid}",
        "KAFKA_SAMPLES_TOPIC": f"samples-{uid}",
        "KAFKA_MODEL_VERSIONS_TOPIC": f"model-versions-{uid}",
        "KAFKA_LABELS_TOPIC": f"labels-{uid}",
        "MODELS_STORE": str(tmp_path / "models"),
        "KAFKA_SESSION_TIMEOUT_S": "6",
        "STREAM_MAX_WAIT_S": "0.5",
        "METRICS_PORT": str(free_port()),
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LOGLEVEL": "info",
        # Every labeled event is trained on (the e2e test counts them): no probe hold-out.
        "METRICS_PROBE_SIZE": "0",
    }
    create_topics(broker.bootstrap, {env[k]: 1 for k in env if k.endswith("_TOPIC")})
    return env


@pytest.fixture
def start_worker(worker_env, tmp_path):
    procs: list[WorkerProc] = []

    def _start(role: str = "worker", **overrides) -> WorkerProc:
        env = dict(worker_env, **overrides)
        w = WorkerProc(env, tmp_path / f"{role}-{len(procs)}.log", role).start()
        procs.append(w)
        return w

    yield _start
    for w in procs:
        try:
            w.stop(timeout=30)
        except AssertionError:
            pass
        w.kill()


def wait_until(predicate, timeout: float, interval: float = 0.5, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {message}")
