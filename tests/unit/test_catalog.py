"""The topic registry, and the generated catalog (docs/) that must match it and the schemas."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
import yaml

from services.core import codec, messages, topics
from services.core.events import (
    COMPENSATION_FAILED,
    DEAD_LETTER,
    DOCUMENT_COMPLETED,
    PROGRESS_EVENTS,
    TERMINAL_EVENTS,
    UPLOAD_STARTED,
)
from services.core.saga import OWNER
from services.operator import catalog
from tests.unit.test_codec import sample_events

REGENERATE = "out of date: run `.venv/bin/python -m services.operator.catalog` and commit docs/"


# --- topics --------------------------------------------------------------------------------------
def test_every_event_type_travels_on_its_owners_topic_only() -> None:
    for event_type, owner in OWNER.items():
        home = topics.topic_for(event_type, owner)
        assert home.writers == (owner,) and topics.carriers(event_type) - {topics.COMPLETIONS.name} == {home.name}
        assert topics.topic_for(event_type, "operator") is home  # a re-drive goes where the owner's would
    for service in topics.SERVICES:  # any service's undo can fail: each announces it on its own topic
        assert topics.topic_for(COMPENSATION_FAILED, service).name == f"{topics.PREFIX}.{service}.events"
    assert topics.topic_for(DEAD_LETTER, "graph") is topics.DEAD_LETTERS


def test_progress_domain_terminal_and_dead_letters_are_routed_apart() -> None:
    assert {topics.topic_for(t, OWNER[t]).name for t in PROGRESS_EVENTS} == {t.name for t in topics.PROGRESS_TOPICS}
    assert topics.topics_for(UPLOAD_STARTED, "uploader") == (topics.topic_for(UPLOAD_STARTED, "uploader"),)
    for t in TERMINAL_EVENTS:
        producer = OWNER.get(t, "vector")
        assert topics.topics_for(t, producer) == (topics.topic_for(t, producer), topics.COMPLETIONS)
    assert set(topics.COMPLETIONS.carries) == TERMINAL_EVENTS
    assert not set(PROGRESS_EVENTS) & {e for t in topics.SAGA_TOPICS for e in t.carries}


def test_topic_layout() -> None:
    assert [(t.name.removeprefix(topics.PREFIX), t.partitions, t.writers) for t in topics.ALL_TOPICS] == [
        (".submissions", 6, ("client",)),
        *[(f".{s}.events", 6, (s,)) for s in topics.SERVICES],
        (".uploader.progress", 6, ("uploader",)), (".vector.progress", 6, ("vector",)),
        (".vector.work", 12, ("vector",)),
        (".saga.completions", 3, topics.SERVICES), (".saga.dlq", 1, topics.SERVICES),
    ]
    # work items never travel on a topic the saga's consumers read
    assert topics.WORK_TOPICS[0].carries == ("VectorItemRequested",)
    assert all("VectorItemRequested" not in t.carries for t in topics.SAGA_TOPICS)
    events, progress = topics.SAGA_TOPICS[1], topics.PROGRESS_TOPICS[0]
    assert progress.retention_ms < events.retention_ms < topics.COMPLETIONS.retention_ms
    assert events.configs == {"retention.ms": str(events.retention_ms), "cleanup.policy": "delete",
                              "min.insync.replicas": "1", "unclean.leader.election.enable": "false"}
    on_a_cluster = topics.build_topics("p", replication_factor=3)[1]
    assert (on_a_cluster.replication_factor, on_a_cluster.configs["min.insync.replicas"]) == (3, "2")


def test_an_unknown_type_or_producer_has_no_topic() -> None:
    for event_type, producer in (("Nope", "graph"), (COMPENSATION_FAILED, "client")):
        try:
            topics.topic_for(event_type, producer)
        except KeyError as e:
            assert event_type in str(e)
        else:
            raise AssertionError("expected KeyError")


def test_topic_prefix_comes_from_the_environment() -> None:
    env = {**os.environ, "UDS3_TOPIC_PREFIX": "t-42", "UDS3_TOPIC_REPLICATION": "3"}
    out = subprocess.run(
        [sys.executable, "-c", "from services.core import topics as t; print(t.SUBMISSIONS.name, t.topic_for("
                               "'DocumentCompleted', 'relational').name, t.DEAD_LETTERS.replication_factor)"],
        env=env, cwd=catalog.ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == ["t-42.submissions", "t-42.relational.events", "3"]


# --- catalog -------------------------------------------------------------------------------------
def test_committed_asyncapi_is_up_to_date() -> None:
    assert catalog.ASYNCAPI_PATH.read_text(encoding="utf-8") == catalog.asyncapi_yaml(), REGENERATE


def test_committed_event_catalog_is_up_to_date() -> None:
    assert catalog.CATALOG_PATH.read_text(encoding="utf-8") == catalog.catalog_markdown(), REGENERATE


def test_committed_typed_payloads_are_up_to_date_and_read_every_event() -> None:
    assert catalog.MESSAGES_PATH.read_text(encoding="utf-8") == catalog.messages_py(), REGENERATE
    for name in codec.REGISTRY.current:
        if name == "Envelope":
            continue
        typed = getattr(messages, name)  # one class per schema
        for sample in sample_events(name, 4):  # every union branch, through the wire as a service gets it
            payload = typed.of(codec.decode(codec.encode(sample)))
            assert {f.name: getattr(payload, f.name) for f in dataclasses.fields(payload)} == {
                k: tuple(v) if isinstance(v, list) else v for k, v in sample.payload.items()}
        with pytest.raises(TypeError):  # a payload is never read as another event's type
            typed.of(replace(sample, event_type="Other"))


def test_check_mode_reports_up_to_date() -> None:
    assert catalog.main(["--check"]) == 0


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_asyncapi_document_is_consistent() -> None:
    doc = yaml.safe_load(catalog.ASYNCAPI_PATH.read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["components"]["messages"]) == set(codec.event_types())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {t.name for t in catalog.build_topics("uds3")}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            assert _resolve(doc, ref["$ref"])["payload"]["schemaFormat"].startswith("application/vnd.apache.avro")
    for op in doc["operations"].values():
        channel = _resolve(doc, op["channel"]["$ref"])
        for message in op["messages"]:
            assert message["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            _resolve(doc, message["$ref"])
        assert op["action"] in ("send", "receive") and channel


def test_asyncapi_payload_is_the_exact_writer_schema() -> None:
    doc = yaml.safe_load(catalog.ASYNCAPI_PATH.read_text(encoding="utf-8"))
    message = doc["components"]["messages"][DOCUMENT_COMPLETED]
    schema = message["payload"]["schema"]
    assert codec.schema_fingerprint(schema).hex() == message["x-uds3-fingerprint"]
    assert message["x-uds3-fingerprint"] == codec.REGISTRY.current[DOCUMENT_COMPLETED].fingerprint.hex()
