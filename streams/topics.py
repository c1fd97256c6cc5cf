"""Topic administration with kafka-python: create source and output topics explicitly.

Create topics with their partition count before workers start: auto-created topics
may get another count and confuse Faust's partition assignor.
"""

from __future__ import annotations

import logging
from typing import Mapping

log = logging.getLogger(__name__)


def create_topics(bootstrap: str, topics: Mapping[str, int], *, replication_factor: int = 1,
                  client_kwargs: Mapping | None = None, timeout_s: float = 30.0) -> list[str]:
    """Create ``{name: partitions}`` topics that do not exist yet; returns the ones created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamlearner-admin",
                             request_timeout_ms=int(timeout_s * 1000), **dict(client_kwargs or {}))
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name=name, num_partitions=parts, replication_factor=replication_factor)
                  for name, parts in topics.items() if name not in existing]
        created = []
        for topic in wanted:  # one by one: a race with another creator is not an error
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics %s", ", ".join(created))
        return created
    finally:
        admin.close()


def settings_topics(kafka) -> dict[str, int]:
    """The topics a worker needs, from a :class:`~streams.settings.KafkaConfig`."""
    return {name: kafka.partitions for name in kafka.all_topics()}
