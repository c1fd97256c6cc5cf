"""The ingestion agent: one per source topic, thin by design.

It only turns Faust events into :class:`~streams.pipeline.RawEvent` and hands
micro-batches to the pipeline. ``take_events`` acks a batch after the body
returns, i.e. after the learner applied it and the outputs were delivered.
"""

from __future__ import annotations

import faust

from streams.pipeline import Pipeline, RawEvent


def register_ingest_agent(app: faust.App, topic: faust.TopicT, task: str,
                          pipeline: Pipeline) -> faust.types.AgentT:
    cfg = pipeline.settings.stream

    async def ingest(stream):
        async for events in stream.take_events(cfg.batch_size, within=cfg.max_wait_s):
            batch = [RawEvent(value=e.value if isinstance(e.value, bytes) else bytes(e.value or b""),
                              topic=e.message.topic, partition=e.message.partition,
                              offset=e.message.offset, timestamp=e.message.timestamp)
                     for e in events]
            report = await pipeline.handle(task, batch)
            yield report

    ingest.__name__ = ingest.__qualname__ = f"ingest_{task}"
    return app.agent(topic, name=f"{app.conf.id}.ingest-{task}", concurrency=1, sink=None)(ingest)
