"""The ingestion agent: one per source topic, thin by design.

It only turns Faust events into :class:`~streams.pipeline.RawEvent` and hands
micro-batches to the pipeline. Events are taken without automatic acks
(``noack_take``): the pipeline calls the batch's ``ack`` once a checkpoint holds its
effect, and only acked offsets are committed. The batch runs shielded from the
agent's cancellation, so a stopping worker never leaves half a batch applied. An exception
that escapes the agent anyway stops the pipeline (``Pipeline.fail``, from the app's agent
error hook in streams/app.py) before Faust restarts the agent: the restarted agent would skip
the in-flight events, and acking the later ones would let Faust commit past them.
"""

from __future__ import annotations

import asyncio

import faust

from streams.pipeline import Pipeline, RawEvent


def register_ingest_agent(app: faust.App, topic: faust.TopicT, task: str,
                          pipeline: Pipeline) -> faust.types.AgentT:
    cfg = pipeline.settings.stream

    async def ingest(stream):
        async for events in stream.noack_take(cfg.batch_size, within=cfg.max_wait_s):
            batch = [RawEvent(value=e.value if isinstance(e.value, bytes) else bytes(e.value or b""),
                              topic=e.message.topic, partition=e.message.partition,
                              offset=e.message.offset, timestamp=e.message.timestamp)
                     for e in events]

            async def ack(events=events):
                for event in events:
                    await stream.ack(event)

            report = await asyncio.shield(pipeline.handle(task, batch, ack))
            yield report

    ingest.__name__ = ingest.__qualname__ = f"ingest_{task}"
    return app.agent(topic, name=f"{app.conf.id}.ingest-{task}", concurrency=1, sink=None)(ingest)
