"""The source-topic agent: one per source topic, thin by design.

It only turns Faust events into :class:`~streams.admit.RawEvent` and hands micro-batches to
the role's batch handler (``handle(task, batch, ack)``). Events are taken without automatic
acks (``noack_take``): the handler calls the batch's ``ack`` once its effect is durable, and
only acked offsets are committed. The batch runs shielded from the agent's cancellation, so
a stopping process never leaves half a batch applied. An exception that escapes the agent
anyway fails the latch (from the app's agent error hook in streams/app.py) before Faust
restarts the agent: the restarted agent would skip the in-flight events, and acking the later
ones would let Faust commit past them.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Awaitable, Callable, Sequence

import faust

from streams.admit import RawEvent

Handle = Callable[[str, Sequence[RawEvent], Callable[[], Awaitable[Any]]], Awaitable[Any]]


def raw_events(events) -> list[RawEvent]:
    return [RawEvent(value=e.value if isinstance(e.value, bytes) else bytes(e.value or b""),
                     topic=e.message.topic, partition=e.message.partition,
                     offset=e.message.offset, timestamp=e.message.timestamp)
            for e in events]


def register_ingest_agent(app: faust.App, topic: faust.TopicT, task: str, handle: Handle, *,
                          batch_size: int, max_wait_s: float,
                          name: str = "ingest") -> faust.types.AgentT:
    async def ingest(stream):
        async for events in stream.noack_take(batch_size, within=max_wait_s):
            batch = raw_events(events)

            async def ack(events=events):
                for event in events:
                    await stream.ack(event)

            yield await asyncio.shield(handle(task, batch, ack))

    ingest.__name__ = ingest.__qualname__ = re.sub(r"\W", "_", f"{name}_{task}")
    return app.agent(topic, name=f"{app.conf.id}.{name}-{task}", concurrency=1, sink=None)(ingest)
