"""The topic registry, and the generated catalog (docs/) that must match it and the schemas."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import yaml

from services.core import catalog, codec, topics
from services.core.events import (
    ALL_EVENT_TYPES,
    DEAD_LETTER,
    DOCUMENT_COMPLETED,
    PROGRESS_EVENTS,
    TERMINAL_EVENTS,
    UPLOAD_STARTED,
)

REGENERATE = "out of date: run `.venv/bin/python -m services.core.catalog` and commit docs/"


# --- topics --------------------------------------------------------------------------------------
def test_every_event_type_has_exactly_one_home_topic() -> None:
    for event_type in [*ALL_EVENT_TYPES, DEAD_LETTER]:
        homes = [t for t in (topics.EVENTS, topics.PROGRESS, topics.DEAD_LETTERS) if event_type in t.carries]
        assert homes == [topics.topic_for(event_type)]


def test_progress_domain_terminal_and_dead_letters_are_routed_apart() -> None:
    assert all(topics.topic_for(t) is topics.PROGRESS for t in PROGRESS_EVENTS)
    assert topics.topics_for(UPLOAD_STARTED) == (topics.EVENTS,)
    for t in TERMINAL_EVENTS:
        assert topics.topics_for(t) == (topics.EVENTS, topics.COMPLETIONS)
    assert set(topics.COMPLETIONS.carries) == TERMINAL_EVENTS
    assert topics.topics_for(DEAD_LETTER) == (topics.DEAD_LETTERS,)


def test_topic_layout() -> None:
    assert [(t.name.removeprefix(topics.PREFIX), t.partitions) for t in topics.ALL_TOPICS] == [
        (".saga.events", 6), (".saga.progress", 6), (".saga.completions", 3), (".saga.dlq", 1),
    ]
    assert topics.PROGRESS.retention_ms < topics.EVENTS.retention_ms < topics.COMPLETIONS.retention_ms
    assert topics.EVENTS.configs == {"retention.ms": str(topics.EVENTS.retention_ms), "cleanup.policy": "delete"}


def test_unknown_event_type_has_no_topic() -> None:
    try:
        topics.topic_for("Nope")
    except KeyError as e:
        assert "Nope" in str(e)
    else:
        raise AssertionError("expected KeyError")


def test_key_is_the_document_id() -> None:
    assert topics.key_for("3b1d7e52") == b"3b1d7e52"


def test_topic_prefix_comes_from_the_environment() -> None:
    env = {**os.environ, "UDS3_TOPIC_PREFIX": "t-42", "UDS3_TOPIC_REPLICATION": "3"}
    out = subprocess.run(
        [sys.executable, "-c", "from services.core import topics as t; print(t.EVENTS.name, "
                               "t.topic_for('DocumentCompleted').name, t.DEAD_LETTERS.replication_factor)"],
        env=env, cwd=catalog.ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == ["t-42.saga.events", "t-42.saga.events", "3"]


# --- catalog -------------------------------------------------------------------------------------
def test_committed_asyncapi_is_up_to_date() -> None:
    assert catalog.ASYNCAPI_PATH.read_text(encoding="utf-8") == catalog.asyncapi_yaml(), REGENERATE


def test_committed_event_catalog_is_up_to_date() -> None:
    assert catalog.CATALOG_PATH.read_text(encoding="utf-8") == catalog.catalog_markdown(), REGENERATE


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
