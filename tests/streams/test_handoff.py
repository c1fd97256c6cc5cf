import asyncio
import threading
import time

import pytest

from streams.handoff import ModelThread


async def test_runs_off_the_event_loop_on_one_thread():
    names = set()
    loop_thread = threading.current_thread().name

    def job():
        names.add(threading.current_thread().name)
        return 1

    with ModelThread(queue_size=2) as mt:
        assert sum(await asyncio.gather(*(mt.run(job) for _ in range(5)))) == 5
    assert len(names) == 1 and loop_thread not in names


async def test_bounded_queue_makes_callers_wait():
    gate = threading.Event()
    with ModelThread(queue_size=1) as mt:
        first = asyncio.ensure_future(mt.run(gate.wait, 5))
        second = asyncio.ensure_future(mt.run(time.time))
        await asyncio.sleep(0.1)
        assert mt.pending == 1 and not second.done()   # backpressure, nothing dropped
        gate.set()
        await asyncio.gather(first, second)
        assert second.result() > 0


async def test_errors_propagate():
    def boom():
        raise RuntimeError("x")

    with ModelThread() as mt:
        with pytest.raises(RuntimeError):
            await mt.run(boom)


def test_queue_size_validated():
    with pytest.raises(ValueError, match="queue_size"):
        ModelThread(queue_size=0)
