"""Shared helpers of the perf benchmarks: machine description, data, percentiles, peak RSS."""

from __future__ import annotations

import csv
import math
import os
import platform
import random
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "data" / "banking77" / "train.csv"


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def banking77(limit: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """BANKING77 training texts and intents, shuffled with ``seed``."""
    with open(BANKING77, newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit else rows
    return [t for t, _ in rows], [y for _, y in rows]


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; nan when empty."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return float(xs[k])


def summary(values) -> dict:
    values = list(values)
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else float("nan")}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms).

    >>> with PeakRSS() as peak:
    ...     _ = bytearray(1 << 20)
    >>> peak.bytes > 0
    True
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while True:
            self.bytes = max(self.bytes, proc.memory_info().rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Stopwatch:
    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t
