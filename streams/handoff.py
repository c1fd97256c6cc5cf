"""Bounded hand-off from the event loop to the single model thread.

Model work (tokenise, forward, backward) must never run on the event loop: it
would stall heartbeats and fetches. All of it runs on one dedicated thread (the
learner is not thread-safe). At most ``queue_size`` jobs wait or run there; a
caller beyond that awaits a slot, which is how backpressure reaches the agents:
they stop taking events, the consumer stops fetching, lag grows in Kafka and
nothing is dropped.

>>> import asyncio
>>> async def main():
...     with ModelThread(queue_size=1) as mt:
...         return await mt.run(sum, [1, 2, 3])
>>> asyncio.run(main())
6
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def _no_stop_iteration(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    # asyncio cannot set a StopIteration on a future: the awaiting coroutine would hang.
    try:
        return fn(*args, **kwargs)
    except StopIteration as e:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)!r} raised StopIteration") from e


def _name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level too (Linux, best effort), less
    the ``streamlearner-`` prefix: ``top -H``, ``ps -L`` and ``/proc/<pid>/task/*/comm`` then
    tell the model thread and the serving threads apart (``bench.threads``)."""
    import ctypes
    import ctypes.util

    name = threading.current_thread().name.removeprefix("streamlearner-")[:15]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(15, name.encode(), 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):   # not Linux, or no libc to call: names stay Python's
        pass


def _start_thread(torch_threads: int | None) -> None:
    """A pool thread's start: its OS name, and its own intra-op thread count (OpenMP keeps
    it per thread)."""
    _name_os_thread()
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)


class ModelThread:
    """``workers`` threads (default one: the learner is not thread-safe) behind a bounded
    queue. Several workers run jobs side by side, so only for thread-safe jobs (serving's
    snapshots), each worker with ``torch_threads`` intra-op threads of its own."""

    def __init__(self, queue_size: int = 2, name: str = "streamlearner-model", *,
                 workers: int = 1, torch_threads: int | None = None):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.queue_size = max(queue_size, workers)
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=name,
            initializer=_start_thread, initargs=(torch_threads,))
        # One semaphore per event loop: Faust and tests may each run their own loop.
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._lock = threading.Lock()
        self._waiting = 0

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._slots.get(id(loop))
            if sem is None:
                sem = self._slots[id(loop)] = asyncio.Semaphore(self.queue_size)
            return sem

    @property
    def pending(self) -> int:
        """Jobs waiting for a slot (backpressure indicator)."""
        return self._waiting

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the model thread once a slot is free; await its result."""
        sem = self._slot()
        self._waiting += 1
        try:
            await sem.acquire()
        finally:
            self._waiting -= 1
        try:
            future = self._executor.submit(_no_stop_iteration, fn, *args, **kwargs)
            return await asyncio.wrap_future(future)
        finally:
            sem.release()

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run on the model thread from synchronous code (start-up, shutdown) and wait."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "ModelThread":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
