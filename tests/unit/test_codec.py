"""The codec: every event round-trips, the wire format is standard Avro, bad input is rejected."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastavro
import pytest

from services.core import codec
from services.core.codec import InvalidEvent, SchemaError, UndecodableEvent
from services.core.events import CHUNK_STORED, DEAD_LETTER, DOCUMENT_SUBMITTED, Event
from services.core.saga import ALL_EVENT_TYPES
from services.operator.compat import samples

T0 = datetime(2025, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
CHUNK = {"operation_id": "op-1", "index": 3, "offset": 15 * 2**20, "length": 5 * 2**20, "sha256": "ab" * 32}


def chunk_stored(**changes: Any) -> Event:
    return replace(Event(CHUNK_STORED, "doc-1", "saga-1", dict(CHUNK), event_id="ev-1", occurred_at=T0,
                         producer="uploader"),
                   **changes)


def sample_events(event_type: str, count: int = 8) -> list[Event]:
    """Valid events of one type, walking every union branch of its schema."""
    events = []
    for record in samples(codec.schema_for(event_type), count):
        env = record.pop("envelope")
        events.append(Event(
            event_type=event_type, document_id=env["document_id"], saga_id=env["saga_id"], payload=record,
            event_id=env["event_id"] or "e", causation_id=env["causation_id"],
            correlation_id=env["correlation_id"] or "c", occurred_at=env["occurred_at"],
            producer=env["producer"], schema_version=codec.schema_version(event_type),
        ))
    return events


# --- schemas -----------------------------------------------------------------------------------
def test_every_event_type_and_the_dead_letter_have_a_schema() -> None:
    assert sorted(codec.event_types()) == sorted([*ALL_EVENT_TYPES, DEAD_LETTER])


def test_every_schema_starts_with_the_one_shared_envelope() -> None:
    envelope = json.loads((codec.SCHEMAS_DIR / codec.ENVELOPE_FILE).read_text())
    for name in codec.event_types():
        raw = json.loads((codec.SCHEMAS_DIR / f"{name}.avsc").read_text())
        assert raw["namespace"] == "uds3.events" and raw["name"] == name
        assert (raw["fields"][0]["name"], raw["fields"][0]["type"]) == ("envelope", "uds3.Envelope")
        assert codec.schema_for(name)["fields"][0]["type"] == envelope


def test_every_payload_field_is_documented() -> None:
    for name in codec.event_types():
        undocumented = [f["name"] for f in codec.schema_for(name)["fields"] if not f.get("doc")]
        assert not undocumented, f"{name}: fields without doc: {undocumented}"


def test_schema_for_returns_a_copy() -> None:
    codec.schema_for(CHUNK_STORED)["fields"].clear()
    assert codec.schema_for(CHUNK_STORED)["fields"]


def test_unknown_event_type_has_no_schema() -> None:
    with pytest.raises(InvalidEvent, match="Nope"):
        codec.schema_for("Nope")


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("event_type", sorted([*ALL_EVENT_TYPES, DEAD_LETTER]))
def test_every_event_type_round_trips(event_type: str) -> None:
    for event in sample_events(event_type):
        assert codec.decode(codec.encode(event)) == event


def test_decoded_payload_has_defaults_filled_in() -> None:
    minimal = {"source_uri": "file:///a.pdf", "size_bytes": 10, "content_type": "application/pdf",
               "submitter": "alice"}
    event = Event(DOCUMENT_SUBMITTED, "doc-1", "saga-1", minimal, occurred_at=T0)
    decoded = codec.decode(codec.encode(event))
    assert decoded.payload == {**minimal, "declared_sha256": None, "title": None, "author": None,
                               "organisation": None, "case_number": None, "references": [],
                               "metadata": {}, "security_level": "internal"}


def test_encode_stamps_the_current_schema_version() -> None:
    event = Event(DOCUMENT_SUBMITTED, "d", "s", {"source_uri": "u", "size_bytes": 1, "content_type": "t",
                                                 "submitter": "x"}, occurred_at=T0, schema_version=1)
    assert codec.schema_version(DOCUMENT_SUBMITTED) == 2
    assert codec.decode(codec.encode(event)).schema_version == 2


def test_occurred_at_comes_back_as_utc_with_millisecond_precision() -> None:
    cet = timezone(timedelta(hours=1))
    event = chunk_stored(occurred_at=datetime(2025, 3, 1, 13, 30, 15, 123456, tzinfo=cet))
    decoded = codec.decode(codec.encode(event)).occurred_at
    assert decoded == datetime(2025, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
    assert decoded.utcoffset() == timedelta(0)


def test_dead_letter_carries_arbitrary_original_bytes() -> None:
    original = bytes(range(256)) * 3
    letter = Event(DEAD_LETTER, "doc-1", "doc-1", {"original": original, "topic": "uds3.saga.events",
                   "partition": 2, "offset": 41, "error": "bad marker", "consumer_group": "uds3-vector"},
                   occurred_at=T0)
    assert codec.decode(codec.encode(letter)).payload["original"] == original


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = codec.encode(chunk_stored())
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == chunk_stored()


# --- wire format -------------------------------------------------------------------------------
def test_fingerprint_is_the_avro_spec_crc64() -> None:
    # Test vector from the Avro specification's fingerprint test data: "null" -> 7195948357588979594.
    assert int.from_bytes(codec.schema_fingerprint("null"), "little") == 7195948357588979594


def test_frame_is_standard_single_object_encoding() -> None:
    data = codec.encode(chunk_stored())
    schema = codec.schema_for(CHUNK_STORED)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec.schema_fingerprint(schema)
    # Any Avro library can read the body with the schema the fingerprint names.
    record: Any = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(schema), None)
    assert record["index"] == 3 and record["envelope"]["event_type"] == CHUNK_STORED


def test_fingerprints_are_unique_per_event_and_version() -> None:
    registry = codec.REGISTRY
    kept = [*registry.current.values(), *(v for vs in registry.history.values() for v in vs)]
    assert len({s.fingerprint for s in kept}) == len(kept)


# --- invalid events ----------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"index": True}, r"ChunkStored\.index: expected int"),
    ({"index": 2**31}, r"ChunkStored\.index: expected int"),
    ({"offset": 1.5}, r"ChunkStored\.offset: expected long"),
    ({"sha256": None}, r"ChunkStored\.sha256: expected string"),
    ({"sha256": b"ab"}, r"ChunkStored\.sha256: expected string"),
    ({"shasum": "x"}, r"ChunkStored\.shasum: no such field"),
    ({"envelope": {}}, r"ChunkStored\.envelope: no such field"),
])
def test_encode_rejects_a_payload_that_does_not_fit(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        codec.encode(chunk_stored(payload={**CHUNK, **change}))


def test_encode_names_a_missing_field() -> None:
    payload = {k: v for k, v in CHUNK.items() if k != "sha256"}
    with pytest.raises(InvalidEvent, match=r"ChunkStored\.sha256: required field is missing"):
        codec.encode(chunk_stored(payload=payload))


def test_encode_names_the_bad_element_of_a_collection() -> None:
    event = Event(DOCUMENT_SUBMITTED, "d", "s", {"source_uri": "u", "size_bytes": 1, "content_type": "t",
                                                 "submitter": "x", "references": ["a", 7]}, occurred_at=T0)
    with pytest.raises(InvalidEvent, match=r"DocumentSubmitted\.references\[1\]: expected string"):
        codec.encode(event)
    with pytest.raises(InvalidEvent, match=r"DocumentSubmitted\.metadata\['k'\]: expected string"):
        codec.encode(event.with_payload(references=[], metadata={"k": 1}))


def test_encode_rejects_a_naive_timestamp() -> None:
    with pytest.raises(InvalidEvent, match=r"envelope\.occurred_at: expected timezone-aware datetime"):
        codec.encode(chunk_stored(occurred_at=datetime(2025, 1, 1)))


def test_encode_rejects_a_non_string_envelope_field() -> None:
    with pytest.raises(InvalidEvent, match=r"envelope\.document_id: expected string"):
        codec.encode(chunk_stored(document_id=42))


def test_encode_rejects_an_unknown_event_type() -> None:
    with pytest.raises(InvalidEvent, match="unknown event type 'ChunkLost'"):
        codec.encode(chunk_stored(event_type="ChunkLost"))


def test_invalid_event_is_a_value_error() -> None:
    assert issubclass(InvalidEvent, ValueError)


# --- undecodable bytes -------------------------------------------------------------------------
GOOD = codec.encode(chunk_stored())


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short"),
    (GOOD[:9], "too short"),
    (b"\x00\x01" + GOOD[2:], "bad marker"),
    (GOOD[:2] + b"\x00" * 8 + GOOD[10:], "unknown schema fingerprint"),
    (GOOD[:-1], "corrupt body"),
    (GOOD[:40], "corrupt body"),
    (GOOD + b"\x00", "trailing bytes"),
    (None, "expected bytes"),
    ("text", "expected bytes"),
])
def test_decode_rejects_what_is_not_an_event(data: Any, message: str) -> None:
    with pytest.raises(UndecodableEvent, match=message):
        codec.decode(data)


def test_decode_rejects_an_envelope_that_contradicts_its_schema() -> None:
    schema = codec.REGISTRY.current[CHUNK_STORED]
    record = {**CHUNK, "envelope": {"event_id": "e", "event_type": "UploadStarted", "document_id": "d",
                                    "saga_id": "s", "causation_id": None, "correlation_id": "c",
                                    "occurred_at": T0, "producer": "p", "schema_version": 1}}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema.parsed, record)
    with pytest.raises(UndecodableEvent, match="envelope says 'UploadStarted'"):
        codec.decode(schema.header + body.getvalue())


# --- loading -----------------------------------------------------------------------------------
def _schemas_dir(tmp_path: Path, files: dict[str, Any]) -> Path:
    (tmp_path / "history").mkdir()
    (tmp_path / codec.ENVELOPE_FILE).write_text((codec.SCHEMAS_DIR / codec.ENVELOPE_FILE).read_text())
    for name, schema in files.items():
        (tmp_path / name).write_text(json.dumps(schema))
    return tmp_path


def _event_schema(name: str, namespace: str = "uds3.events", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, **(extra or {}),
            "fields": [{"name": "envelope", "type": "uds3.Envelope"}, {"name": "n", "type": "int"}]}


@pytest.mark.parametrize(("files", "message"), [
    ({"X.avsc": _event_schema("X", namespace="other")}, "namespace"),
    ({"X.avsc": _event_schema("Y")}, "record named 'X'"),
    ({"X.avsc": {"type": "record", "name": "X", "namespace": "uds3.events",
                 "fields": [{"name": "n", "type": "int"}]}}, "first field must be 'envelope'"),
    ({"X.avsc": _event_schema("X", extra={"uds3.version": 0})}, "positive integer"),
    ({"X.avsc": _event_schema("X"), "history/X.v1.avsc": _event_schema("X")}, "version above 1"),
    ({"X.avsc": _event_schema("X"), "history/X.avsc": _event_schema("X")}, r"<Event>\.v<N>\.avsc"),
    ({"X.avsc": "not a record"}, "JSON object"),
])
def test_inconsistent_schema_files_fail_at_load(tmp_path: Path, files: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        codec.Registry.load(_schemas_dir(tmp_path, files))


def test_a_loaded_registry_encodes_independently(tmp_path: Path) -> None:
    registry = codec.Registry.load(_schemas_dir(tmp_path, {"X.avsc": _event_schema("X")}))
    event = Event("X", "d", "s", {"n": 5}, occurred_at=T0)
    assert registry.decode(registry.encode(event)) == event
    with pytest.raises(UndecodableEvent, match="unknown schema fingerprint"):
        registry.decode(GOOD)
