"""The native stack answers with the client libraries the services use (issue: foundation)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from neo4j import AsyncGraphDatabase
from neo4j.exceptions import AuthError
from pymilvus import MilvusClient

from services.core.config import Settings

pytestmark = pytest.mark.stack


async def new_topic(settings: Settings, partitions: int = 1) -> str:
    name = f"smoke-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**settings.kafka("admin"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


def test_broker_is_apache_kafka_4_in_kraft_mode(stack: Settings) -> None:
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    broker = [line.split() for line in ps.splitlines() if " kafka.Kafka " in line]
    assert broker, "no kafka.Kafka process"
    args = broker[0]
    classpath = Path(args[args.index("-cp") + 1].rstrip("*"))
    assert [j.name for j in classpath.glob("kafka_2.13-4.*.jar")], f"no Apache Kafka 4.x jar in {classpath}"
    props = Path(args[-1]).read_text()
    assert "process.roles=broker,controller" in props
    assert "auto.create.topics.enable=false" in props


async def test_idempotent_producer_and_manual_commits(stack: Settings) -> None:
    topic = await new_topic(stack)
    producer = AIOKafkaProducer(**stack.kafka("admin"), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"doc")
    finally:
        await producer.stop()
    group = f"g-{topic}"
    consumer = AIOKafkaConsumer(topic, **stack.kafka("admin"), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        first = await asyncio.wait_for(consumer.getone(), 30)
        await consumer.commit({TopicPartition(topic, 0): first.offset + 1})
    finally:
        await consumer.stop()
    again = AIOKafkaConsumer(topic, **stack.kafka("admin"), group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    await again.start()
    try:
        resumed = await asyncio.wait_for(again.getone(), 30)
    finally:
        await again.stop()
    assert (first.value, resumed.value) == (b"m0", b"m1")


async def test_transactional_offsets_and_read_committed_skips_aborted(stack: Settings) -> None:
    source, sink = await new_topic(stack), await new_topic(stack)
    plain = AIOKafkaProducer(**stack.kafka("admin"))
    await plain.start()
    await plain.send_and_wait(source, b"input")
    await plain.stop()
    group = f"g-{source}"
    consumer = AIOKafkaConsumer(source, **stack.kafka("admin"), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    producer = AIOKafkaProducer(**stack.kafka("admin"), transactional_id=f"tx-{source}")
    await consumer.start()
    await producer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
        await producer.begin_transaction()
        await producer.send_and_wait(sink, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(sink, b"committed")
            await producer.send_offsets_to_transaction({TopicPartition(source, 0): record.offset + 1}, group)
    finally:
        await producer.stop()
        await consumer.stop()
    reader = AIOKafkaConsumer(sink, **stack.kafka("admin"), auto_offset_reset="earliest",
                              isolation_level="read_committed")
    await reader.start()
    try:
        seen = []
        while b"committed" not in seen:
            seen.append((await asyncio.wait_for(reader.getone(), 30)).value)
    finally:
        await reader.stop()
    assert b"aborted" not in seen
    check = AIOKafkaConsumer(**stack.kafka("admin"), group_id=group)
    await check.start()
    try:
        assert await check.committed(TopicPartition(source, 0)) == record.offset + 1
    finally:
        await check.stop()


def test_postgres_round_trip(stack: Settings) -> None:
    with psycopg.connect(stack.pg_dsn()) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        conn.execute("CREATE TEMP TABLE smoke (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO smoke VALUES (1, 'x')")
        row = conn.execute("SELECT v FROM smoke WHERE id = 1").fetchone()
    assert version is not None and version[0].startswith("15.")
    assert row == ("x",)


async def test_neo4j_refuses_a_client_without_the_password(stack: Settings) -> None:
    for auth in (None, (stack.neo4j_user, "not-the-password")):
        async with AsyncGraphDatabase.driver(stack.neo4j_uri, auth=auth) as driver:
            with pytest.raises(AuthError):
                await driver.execute_query("RETURN 1")


async def test_neo4j_async_driver_writes_and_reads_a_node(stack: Settings) -> None:
    marker = uuid.uuid4().hex
    async with AsyncGraphDatabase.driver(stack.neo4j_uri, auth=(stack.neo4j_user, stack.neo4j_password)) as driver:
        components = await driver.execute_query("CALL dbms.components() YIELD name, versions, edition "
                                                "RETURN name, versions[0] AS v, edition")
        await driver.execute_query("CREATE (:Smoke {marker: $m})", m=marker)
        found = await driver.execute_query("MATCH (n:Smoke {marker: $m}) RETURN count(n) AS n", m=marker)
        await driver.execute_query("MATCH (n:Smoke {marker: $m}) DELETE n", m=marker)
    name, version, edition = components.records[0].values()
    assert (name, edition) == ("Neo4j Kernel", "community") and version.startswith("5.26.")
    assert found.records[0]["n"] == 1


def test_milvus_lite_server_inserts_searches_and_deletes_by_filter(stack: Settings) -> None:
    """The stack's milvus-lite server, as every vector process reaches it: a client by URI."""
    client, smoke = MilvusClient(uri=stack.milvus_uri), f"{stack.milvus_collection}_smoke"
    try:
        client.create_collection(smoke, dimension=4, primary_field_name="id", id_type="string", max_length=16)
        client.upsert(smoke, [{"id": "a", "vector": [1, 0, 0, 0], "doc": "d1"},
                              {"id": "b", "vector": [0, 1, 0, 0], "doc": "d2"}])
        hit = client.search(smoke, [[1, 0, 0, 0]], limit=1, output_fields=["doc"])[0][0]
        client.delete(smoke, filter='doc == "d1"')
        left = client.query(smoke, filter='doc != ""', output_fields=["doc"])
    finally:
        client.drop_collection(smoke)
        client.close()
    assert hit["entity"]["doc"] == "d1"
    assert [r["doc"] for r in left] == ["d2"]
