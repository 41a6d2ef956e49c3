"""End-to-end smoke check of the local stack started by `bash infra/stack.sh up`.

Uses the project's own client libraries (aiokafka, neo4j, psycopg):
  python infra/smoke_check.py            # all checks
  python infra/smoke_check.py --mark     # also MERGE a marker node (to test persistence)
  python infra/smoke_check.py --expect-mark   # fail unless the marker exists, then delete it

Kafka: creates a topic with the admin client (auto-create is off), commits a message
with a transactional producer and reads it back with a read_committed consumer.
Ports come from the same UDS3_* environment variables as infra/stack.sh.
"""

import asyncio
import os
import sys
import time
import uuid

KAFKA = f"127.0.0.1:{os.environ.get('UDS3_KAFKA_PORT', '19092')}"
BOLT = f"bolt://127.0.0.1:{os.environ.get('UDS3_NEO4J_BOLT_PORT', '17687')}"
PG_DSN = f"postgresql://uds3:uds3@127.0.0.1:{os.environ.get('UDS3_PG_PORT', '15432')}/uds3"


async def check_kafka() -> str:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, transactional_id=f"smoke-{topic}")
    await producer.start()
    try:
        # an aborted transaction first: read_committed must skip its message
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=f"g-{topic}",
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    assert msg.value == b"committed", msg
    return f"transactional produce + read_committed consume on {topic} OK"


def check_neo4j(mark: bool, expect_mark: bool) -> str:
    from neo4j import GraphDatabase

    with GraphDatabase.driver(BOLT, auth=None) as driver:
        rec = driver.execute_query(
            "CALL dbms.components() YIELD name, versions, edition RETURN name, versions[0] AS v, edition"
        ).records[0]
        if mark:
            driver.execute_query("MERGE (:SmokeMark {id: 'stack-persistence'})")
        count = driver.execute_query("MATCH (m:SmokeMark {id: 'stack-persistence'}) RETURN count(m) AS c").records[0][
            "c"
        ]
        if expect_mark:  # leave no test data behind in the project's database
            driver.execute_query("MATCH (m:SmokeMark) DELETE m")
    if expect_mark and count != 1:
        raise AssertionError("marker node missing: Neo4j data did not persist")
    return f"{rec['name']} {rec['v']} {rec['edition']}, marker nodes: {count}"


def check_pg() -> str:
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        version = conn.execute("select version()").fetchone()[0]
        maxconn = conn.execute("show max_connections").fetchone()[0]
    return f"{version.split(' on ')[0]}, max_connections={maxconn}"


def main() -> int:
    mark = "--mark" in sys.argv
    expect_mark = "--expect-mark" in sys.argv
    ok = True
    for name, fn in [
        ("postgres", check_pg),
        ("neo4j", lambda: check_neo4j(mark, expect_mark)),
        ("kafka", lambda: asyncio.run(check_kafka())),
    ]:
        t0 = time.monotonic()
        try:
            print(f"{name:9} OK   {fn()} ({time.monotonic() - t0:.1f}s)")
        except Exception as e:  # report every server, not just the first failure
            ok = False
            print(f"{name:9} FAIL {type(e).__name__}: {e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
