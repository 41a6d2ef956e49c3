"""The broker decides who may publish what: every client authenticates (SASL/SCRAM) and the
KRaft authorizer allows only the ACLs of `services/operator/access.py`. Each case ends with the
victim document exactly as it was and the audit of the stores clean."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError, TopicAuthorizationFailedError

from services.core import codec, topics
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPLETED, Event
from services.operator.consistency import audit
from services.operator.state import SagaReader
from tests.e2e.stores import footprint
from tests.e2e.test_bad_input import terminal_events
from tests.e2e.test_dead_letters import letters_for, readers
from tests.running import Services
from tests.security.test_forged_events import completed

pytestmark = pytest.mark.stack


async def publish_as(settings: Settings, principal: str, topic: str, event: Event) -> None:
    producer = AIOKafkaProducer(**settings.kafka(principal), acks="all", request_timeout_ms=10_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, codec.encode(event), key=event.document_id.encode())
    finally:
        await producer.stop()


async def test_only_a_steps_own_principal_may_publish_its_events(
    services: Services, stack: Settings, run_dir: Path
) -> None:
    folder = run_dir / "acl"
    folder.mkdir()
    victim = await completed(folder, "victim.txt")
    before = footprint(victim)
    saga = SagaReader().state(victim).saga_id
    failure = Event("VectorsFailed", victim, saga, {"step": "Vectors", "reason": "forged", "retryable": False,
                                                   "error_type": "Forged"})
    vector_topic = topics.topic_for(failure.event_type, "vector").name
    for principal in ("client", "graph", "uploader"):  # the submitter, and services that do not own it
        with pytest.raises(TopicAuthorizationFailedError):
            await publish_as(stack, principal, vector_topic, failure)
    with pytest.raises(TopicAuthorizationFailedError):  # nor may a service announce another's completion
        await publish_as(stack, "vector", topics.topic_for(DOCUMENT_COMPLETED, "relational").name,
                         Event(DOCUMENT_COMPLETED, victim, saga, {"content_sha256": "0" * 64, "chunk_count": 1,
                                                                  "page_count": 1, "duration_ms": 1}))
    assert footprint(victim) == before
    assert await terminal_events(stack, victim) == [DOCUMENT_COMPLETED]
    assert not audit(stack, [victim]).violations


async def test_a_wrong_password_is_refused(
    stack: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("UDS3_KAFKA_PASSWORD_CLIENT", "guessed")
    producer = AIOKafkaProducer(**stack.kafka("client"), request_timeout_ms=10_000)
    with pytest.raises(KafkaConnectionError):  # aiokafka logs the broker's reason and gives up
        await producer.start()
    await producer.stop()
    assert "SaslAuthenticationFailed" in caplog.text and "invalid credentials" in caplog.text


async def test_the_client_reads_no_dead_letters_and_joins_no_service_group(stack: Settings) -> None:
    admin = AIOKafkaAdminClient(**stack.kafka("client"))  # metadata as the client principal sees it
    await admin.start()
    try:
        seen = {m["topic"]: m["error_code"] for m in await admin.describe_topics(
            [topics.DEAD_LETTERS.name, topics.COMPLETIONS.name, topics.SUBMISSIONS.name])}
    finally:
        await admin.close()
    assert seen == {topics.DEAD_LETTERS.name: TopicAuthorizationFailedError.errno,
                    topics.COMPLETIONS.name: 0, topics.SUBMISSIONS.name: 0}
    intruder = AIOKafkaConsumer(topics.SUBMISSIONS.name, **stack.kafka("client"), group_id=f"{topics.PREFIX}-vector")
    with pytest.raises(GroupAuthorizationFailedError):  # it would take partitions from the vector service
        await intruder.start()
        await intruder.getmany(timeout_ms=5000)
    await intruder.stop()


def test_the_local_credentials_are_refused_for_a_broker_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UDS3_KAFKA_PASSWORD_VECTOR", raising=False)
    with pytest.raises(RuntimeError, match="UDS3_KAFKA_PASSWORD_VECTOR"):
        Settings(kafka_bootstrap=f"kafka-{uuid.uuid4().hex[:6]}.example.org:9093").kafka("vector")


async def test_an_event_of_another_step_on_a_services_own_topic_is_dead_lettered(
    services: Services, stack: Settings, run_dir: Path
) -> None:
    """The graph principal may write its topic, but a VectorsIndexed there is a forgery: every
    consumer of that topic parks it with the reason, and the graph step never treats it as its
    trigger (nor does the relational step, which reads the graph's topic)."""
    folder = run_dir / "acl-type"
    folder.mkdir()
    victim = await completed(folder, "victim.txt")
    before = footprint(victim)
    forged = Event("VectorsIndexed", victim, SagaReader().state(victim).saga_id,
                   {"collection": "x", "chunk_count": 1, "page_count": 1, "pages_without_text": 0,
                    "embedding_model": "x"})
    graph_topic = topics.topic_for("GraphLinked", "graph").name
    producer = AIOKafkaProducer(**stack.kafka("graph"), acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(graph_topic, codec.encode(forged), key=victim.encode())
    finally:
        await producer.stop()
    letters = await letters_for(stack, (graph_topic, meta.partition, meta.offset), len(readers(graph_topic)))
    assert sorted(x.event.producer for x in letters) == readers(graph_topic) != []
    assert all(f"VectorsIndexed does not travel on {graph_topic}" in x.event.payload["error"] for x in letters)
    assert footprint(victim) == before
    assert not audit(stack, [victim]).violations
