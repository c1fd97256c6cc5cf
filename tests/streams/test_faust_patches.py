"""What streamlearner changes in Faust's own behaviour: the fetcher hears a paused partition
resume (streams/app.py), and a role's worker installs no terminal spinner (roles.py)."""

from __future__ import annotations

import asyncio
import logging
import types

from faust.transport.consumer import Consumer
from faust.types import TP

from streams.app import FETCH_RECHECK_S, wake_fetcher_on_buffer_drop

A, B = TP("feedback", 0), TP("feedback", 1)


class _Fetcher:
    """The attributes of a Faust consumer that ``_wait_next_records`` and ``on_buffer_drop``
    use, with ``_getmany`` recording what it was asked."""

    flow_active = True

    def __init__(self, active: set, buffered: set) -> None:
        self.app = types.SimpleNamespace(client_only=False)
        self._active = active
        self._buffered_partitions = buffered
        self.not_waiting_next_records = asyncio.Event()
        self.fetches: list[tuple[set, float]] = []

    def _get_active_partitions(self) -> set:
        return self._active

    async def _getmany(self, active_partitions, timeout):
        self.fetches.append((set(active_partitions), timeout))
        return {tp: [] for tp in active_partitions}


def test_the_patch_is_installed_once():
    assert wake_fetcher_on_buffer_drop()
    first = Consumer._wait_next_records
    assert wake_fetcher_on_buffer_drop()
    assert Consumer._wait_next_records is first


def test_with_every_partition_paused_the_fetcher_wakes_when_a_buffer_drains():
    wake_fetcher_on_buffer_drop()
    fetcher = _Fetcher(active=set(), buffered={A, B})

    async def scenario():
        # Faust would sleep out the timeout here; a timeout of an hour shows it does not.
        waiting = asyncio.ensure_future(Consumer._wait_next_records(fetcher, 3600.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        Consumer.on_buffer_drop(fetcher, A)   # the stream drained A's buffer below 40%
        return await asyncio.wait_for(waiting, timeout=10)

    records, active = asyncio.run(scenario())
    assert active == {A} and set(records) == {A}
    # B is still paused: the fetch itself waits at most FETCH_RECHECK_S for A's records.
    assert fetcher.fetches == [({A}, FETCH_RECHECK_S)]


def test_with_nothing_drained_the_wait_ends_at_its_timeout_with_no_records():
    wake_fetcher_on_buffer_drop()
    fetcher = _Fetcher(active=set(), buffered={A})
    records, active = asyncio.run(Consumer._wait_next_records(fetcher, 0.01))
    assert records == {} and active == set() and fetcher.fetches == []
    assert fetcher.not_waiting_next_records.is_set()


def test_a_stopping_consumer_ends_the_wait_at_once():
    wake_fetcher_on_buffer_drop()
    fetcher = _Fetcher(active=set(), buffered={A})

    async def scenario():
        fetcher._stopped = asyncio.Event()
        waiting = asyncio.ensure_future(Consumer._wait_next_records(fetcher, 3600.0))
        await asyncio.sleep(0.05)
        fetcher._stopped.set()
        return await asyncio.wait_for(waiting, timeout=10)

    assert asyncio.run(scenario()) == ({}, set())


def test_with_no_partition_paused_the_fetch_keeps_faust_timeout():
    wake_fetcher_on_buffer_drop()
    fetcher = _Fetcher(active={A, B}, buffered=set())
    asyncio.run(Consumer._wait_next_records(fetcher, 1.0))
    assert fetcher.fetches == [({A, B}, 1.0)]


def test_a_role_worker_installs_no_spinner_that_would_turn_on_debug_records():
    from streamlearner.roles import _worker_class

    cls = _worker_class()
    worker = cls.__new__(cls)   # only the logging hook is under test: no app, no loop
    worker.spinner = object()
    logger = logging.Logger("root-like", level=logging.WARNING)
    logger.addHandler(logging.NullHandler())
    worker.on_setup_root_logger(logger, logging.WARNING)
    assert worker.spinner is None
    assert logger.level == logging.WARNING and len(logger.handlers) == 1
    assert not logger.isEnabledFor(logging.DEBUG)
