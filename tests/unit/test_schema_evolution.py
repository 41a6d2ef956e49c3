"""Schema evolution: every kept version stays readable both ways, checked with real resolution."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from services.core import codec
from services.core.codec import UndecodableEvent
from services.core.events import DOCUMENT_SUBMITTED, Event
from services.operator import compat

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SUBMITTED_V1 = {"source_uri": "file:///case/17.pdf", "size_bytes": 300 * 2**20, "declared_sha256": None,
                "content_type": "application/pdf", "title": "Case 17", "author": "Clerk", "case_number": "17",
                "references": ["doc-9"], "metadata": {"court": "north"}, "security_level": "confidential",
                "submitter": "alice"}


def record(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Thing", "namespace": "test", "fields": list(fields)}


BASE = record({"name": "n", "type": "int"}, {"name": "label", "type": ["null", "string"], "default": None})


# --- the rule, on the real schemas ---------------------------------------------------------------
def test_every_kept_version_is_compatible_with_the_current_one() -> None:
    assert compat.check_registry() == []


def test_compat_cli_passes_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert compat.main([]) == 0
    assert "compatible" in capsys.readouterr().out


def test_document_submitted_v1_is_kept_without_organisation() -> None:
    v1 = codec.REGISTRY.version(DOCUMENT_SUBMITTED, 1)
    current = codec.REGISTRY.current[DOCUMENT_SUBMITTED]
    assert current.version == 2 and v1.path == codec.SCHEMAS_DIR / "history" / "DocumentSubmitted.v1.avsc"
    assert "organisation" not in {f["name"] for f in v1.schema["fields"]}
    assert v1.fingerprint != current.fingerprint


def test_bytes_written_by_a_v1_producer_decode_with_organisation_none() -> None:
    # Written the way an old producer did: v1 schema straight from the history file, plain fastavro.
    v1_schema = json.loads((codec.SCHEMAS_DIR / "history" / "DocumentSubmitted.v1.avsc").read_text())
    envelope = {"event_id": "ev-1", "event_type": DOCUMENT_SUBMITTED, "document_id": "doc-1", "saga_id": "saga-1",
                "causation_id": None, "correlation_id": "saga-1", "occurred_at": T0, "producer": "client",
                "schema_version": 1}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(v1_schema), {"envelope": envelope, **SUBMITTED_V1})
    data = b"\xc3\x01" + codec.schema_fingerprint(v1_schema) + body.getvalue()

    event = codec.decode(data)
    assert event.payload == {**SUBMITTED_V1, "organisation": None}
    assert event.schema_version == 1
    assert (event.event_id, event.document_id, event.occurred_at) == ("ev-1", "doc-1", T0)
    # The registry's own old-version encoder produces the same bytes.
    old = Event(DOCUMENT_SUBMITTED, "doc-1", "saga-1", SUBMITTED_V1, event_id="ev-1", occurred_at=T0,
                producer="client")
    assert codec.REGISTRY.encode(old, version=1) == data


def test_bytes_written_now_are_readable_by_a_v1_reader() -> None:
    event = Event(DOCUMENT_SUBMITTED, "doc-1", "saga-1", {**SUBMITTED_V1, "organisation": "Records Office"},
                  occurred_at=T0)
    data = codec.encode(event)
    v1 = codec.REGISTRY.version(DOCUMENT_SUBMITTED, 1)
    current = codec.REGISTRY.current[DOCUMENT_SUBMITTED]
    old_view: Any = fastavro.schemaless_reader(io.BytesIO(data[10:]), current.parsed, v1.parsed)
    assert "organisation" not in old_view and old_view["title"] == "Case 17"


# --- the check itself: it must fail on real breaks -----------------------------------------------
@pytest.mark.parametrize(("new", "direction"), [
    (record(*BASE["fields"], {"name": "extra", "type": "string"}), "backward"),  # required, no default
    (record({"name": "n", "type": "string"}, BASE["fields"][1]), "backward"),  # int -> string
    (record({"name": "n", "type": "long"}, BASE["fields"][1]), "forward"),  # old readers cannot narrow
    (record(BASE["fields"][0]), None),  # dropping a defaulted field is fine...
    (record({"name": "label", "type": ["null", "string"], "default": None}), "forward"),  # ...a required one not
])
def test_incompatible_changes_are_caught(new: dict[str, Any], direction: str | None) -> None:
    errors = compat.compatibility_errors(BASE, new)
    if direction is None:
        assert errors == []
    else:
        assert errors and any(e.startswith(direction) for e in errors), errors


def test_a_new_field_with_a_default_is_compatible() -> None:
    new = record(*BASE["fields"], {"name": "extra", "type": "string", "default": ""})
    assert compat.compatibility_errors(BASE, new) == []


def test_a_removed_union_branch_is_caught_even_though_only_some_data_uses_it() -> None:
    old = record({"name": "v", "type": ["null", "string", "long"]})
    new = record({"name": "v", "type": ["null", "string"]})
    assert any("backward" in e for e in compat.compatibility_errors(old, new))


def test_a_removed_enum_symbol_is_caught() -> None:
    enum = {"type": "enum", "name": "Level", "symbols": ["PUBLIC", "INTERNAL", "SECRET"]}
    old = record({"name": "level", "type": enum})
    new = record({"name": "level", "type": {**enum, "symbols": ["PUBLIC", "INTERNAL"]}})
    assert any("backward" in e for e in compat.compatibility_errors(old, new))


def test_samples_are_valid_and_cover_every_union_branch() -> None:
    schema = codec.schema_for(DOCUMENT_SUBMITTED)
    values = list(compat.samples(schema, 8))
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    assert all(fastavro.validation.validate(v, parsed) for v in values)
    assert {v["title"] is None for v in values} == {True, False}


# --- the breaking marker, on a throwaway schemas directory --------------------------------------
def _event(version: int, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": "Thing", "namespace": "uds3.events", "uds3.version": version, **extra,
            "fields": [{"name": "envelope", "type": "uds3.Envelope"}, *fields]}


def _registry(tmp_path: Path, current: dict[str, Any], old: dict[str, Any]) -> codec.Registry:
    (tmp_path / "history").mkdir()
    (tmp_path / codec.ENVELOPE_FILE).write_text((codec.SCHEMAS_DIR / codec.ENVELOPE_FILE).read_text())
    (tmp_path / "Thing.avsc").write_text(json.dumps(current))
    (tmp_path / "history" / "Thing.v1.avsc").write_text(json.dumps(old))
    return codec.Registry.load(tmp_path)


def test_an_unmarked_break_in_history_is_reported(tmp_path: Path) -> None:
    registry = _registry(tmp_path, _event(2, {"name": "n", "type": "string"}), _event(1, {"name": "n", "type": "int"}))
    problems = compat.check_registry(registry)
    assert problems and problems[0].startswith("Thing v1 -> v2: backward")


def test_a_break_marked_in_the_history_file_is_accepted_but_old_data_is_undecodable(tmp_path: Path) -> None:
    old = _event(1, {"name": "n", "type": "int"}, **{"uds3.breaking": True})
    registry = _registry(tmp_path, _event(2, {"name": "n", "type": "string"}), old)
    assert compat.check_registry(registry) == []
    data = registry.encode(Event("Thing", "d", "s", {"n": 1}, occurred_at=T0), version=1)
    with pytest.raises(UndecodableEvent, match="Thing v1: corrupt body or incompatible schema"):
        registry.decode(data)


def test_snapshot_keeps_the_current_version_in_history(tmp_path: Path) -> None:
    registry = _registry(tmp_path, _event(2, {"name": "n", "type": "int"}), _event(1, {"name": "n", "type": "int"}))
    path = compat.snapshot("Thing", tmp_path, registry)
    assert path.name == "Thing.v2.avsc"
    assert json.loads(path.read_text())["fields"][0]["type"]["name"] == "Envelope"  # frozen, self-contained
    with pytest.raises(FileExistsError):
        compat.snapshot("Thing", tmp_path, registry)
