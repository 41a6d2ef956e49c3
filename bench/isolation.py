"""This run's own Kafka topics, PostgreSQL database and graph nodes: created at the start (the
graph's as it goes), removed at the end.

A database of its own, not just a topic prefix: each service's event store is its outbox, and
a relay publishes everything recorded in its schema that is not yet published, to its own
topics. Sharing the `uds3` database with other runs' services would let their relays publish
our events to their topics (and ours theirs to ours).
"""

from __future__ import annotations

import asyncio

from services.core import topics
from services.core.config import Settings
from services.operator import access
from services.operator.provision import create_database, drop_database, drop_shared_stores


async def create_topics(settings: Settings) -> None:
    await access.provision_kafka(settings)


def create(settings: Settings) -> None:
    create_database(settings)
    asyncio.run(create_topics(settings))


def remove(settings: Settings) -> None:
    """Deletes this run's topics and drops its database; one failing does not stop the other."""
    for what, undo in (("topics", lambda: asyncio.run(topics.delete_topics(settings))),
                       ("database", lambda: drop_database(settings)),
                       ("graph and vectors", lambda: drop_shared_stores(settings))):
        try:
            undo()
        except Exception as e:
            print(f"  could not remove this run's {what}: {type(e).__name__}: {e}", flush=True)
