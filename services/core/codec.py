"""Events to bytes and back: Avro single-object encoding, decoded with schema resolution.

Wire format (Avro spec, "single object encoding"): ``C3 01`` + the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's parsing canonical form + the Avro binary body.
The fingerprint names the exact schema the bytes were written with, so a reader can resolve
old (or newer) versions against its own current schema without any schema registry service.

Schemas live in ``schemas/`` (one ``<Event>.avsc`` each, sharing ``uds3.Envelope.avsc``);
earlier versions in ``schemas/history/<Event>.v<N>.avsc``. They are loaded once at import.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

from services.core.events import Event

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
ENVELOPE_FILE = "uds3.Envelope.avsc"
ENVELOPE_NAME = "uds3.Envelope"
EVENT_NAMESPACE = "uds3.events"
MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8
# Top-level schema attributes of our own (ignored by Avro, kept out of the fingerprint).
VERSION_ATTR = "uds3.version"
BREAKING_ATTR = "uds3.breaking"
PRODUCER_ATTR = "uds3.producer"
_HISTORY_FILE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[0-9]+)\.avsc$")

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)


class UndecodableEvent(Exception):
    """Bytes that are not a decodable event: bad marker, unknown schema, corrupt or short body."""


class InvalidEvent(ValueError):
    """An event that does not match its schema (unknown type, missing/extra/mistyped field)."""


class SchemaError(Exception):
    """The schema files themselves are inconsistent (raised at load time, never at runtime)."""


# --- Validation ------------------------------------------------------------------------------
# fastavro's writer coerces silently (True for a long, 3.7 -> 3, "no" -> True for a boolean) and
# its validate() costs more than the write itself. So each schema gets a compiled predicate
# (fast, on every encode) and, only once that says no, `explain` walks the schema to say why.
Pred = Callable[[Any], bool]


def _integer(lo: int, hi: int) -> Pred:
    return lambda v: type(v) is int and lo <= v <= hi


def _number(v: Any) -> bool:
    return type(v) is float or type(v) is int


def _timestamp(v: Any) -> bool:
    """Aware datetimes only: a naive one would silently be taken as UTC."""
    if isinstance(v, datetime):
        return v.utcoffset() is not None
    return type(v) is int and LONG_RANGE[0] <= v <= LONG_RANGE[1]


_PRIMITIVES: dict[str, tuple[str, Pred]] = {
    "null": ("null", lambda v: v is None),
    "boolean": ("boolean", lambda v: type(v) is bool),
    "int": ("int (32-bit)", _integer(*INT_RANGE)),
    "long": ("long (64-bit)", _integer(*LONG_RANGE)),
    "float": ("float", _number),
    "double": ("double", _number),
    "bytes": ("bytes", lambda v: isinstance(v, bytes | bytearray)),
    "string": ("string", lambda v: isinstance(v, str)),
}
_TIMESTAMPS = ("timestamp-millis", "timestamp-micros")


def fullname(schema: Mapping[str, Any], namespace: str) -> str:
    """The full name (namespace.name) of a named schema, as Avro resolves it."""
    name: str = schema["name"]
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _resolve(name: str, named: Mapping[str, Any], namespace: str) -> Any:
    full = name if "." in name or not namespace else f"{namespace}.{name}"
    if full not in named:
        raise SchemaError(f"unknown type {name!r}")
    return named[full]


def compile_pred(schema: Any, named: dict[str, Pred] | None = None, namespace: str = "") -> Pred:
    """A predicate: does a Python value fit this (JSON, self-contained) Avro schema?"""
    named = {} if named is None else named
    if isinstance(schema, list):
        branches = [compile_pred(b, named, namespace) for b in schema]
        if len(branches) == 2 and schema[0] == "null":
            other = branches[1]
            return lambda v: v is None or other(v)
        return lambda v: any(b(v) for b in branches)
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema][1]
        resolved: Pred = _resolve(schema, named, namespace)
        return resolved
    kind, logical = schema["type"], schema.get("logicalType")
    if kind == "long" and logical in _TIMESTAMPS:
        return _timestamp
    if logical is not None and kind not in ("record", "enum", "fixed"):
        return lambda v: True  # rich values (Decimal, UUID, date): fastavro's writer checks them
    if kind == "array":
        item = compile_pred(schema["items"], named, namespace)
        return lambda v: isinstance(v, list | tuple) and all(map(item, v))
    if kind == "map":
        value = compile_pred(schema["values"], named, namespace)
        return lambda v: (
            isinstance(v, dict) and all(isinstance(k, str) for k in v) and all(map(value, v.values()))
        )
    if kind not in ("record", "enum", "fixed"):
        return compile_pred(kind, named, namespace)
    full = fullname(schema, namespace)
    if kind == "enum":
        symbols = frozenset(schema["symbols"])
        named[full] = lambda v: isinstance(v, str) and v in symbols
    elif kind == "fixed":
        size = schema["size"]
        named[full] = lambda v: isinstance(v, bytes | bytearray) and len(v) == size
    else:
        named[full] = _record_pred(schema, named, full)
    return named[full]


def _record_pred(schema: Mapping[str, Any], named: dict[str, Pred], full: str) -> Pred:
    fields: list[tuple[str, Pred, bool]] = []
    names: set[str] = set()

    def fits(v: Any) -> bool:
        if not isinstance(v, dict):
            return False
        for name, fits_field, has_default in fields:
            if name in v:
                if not fits_field(v[name]):
                    return False
            elif not has_default:
                return False
        return len(v) <= len(fields) or names.issuperset(v)

    named[full] = fits  # before the fields: a record may refer to itself
    ns = full.rpartition(".")[0]
    for f in schema["fields"]:
        fields.append((f["name"], compile_pred(f["type"], named, ns), "default" in f))
        names.add(f["name"])
    return fits


def explain(schema: Any, value: Any, named: dict[str, Any] | None = None, namespace: str = "") -> str | None:
    """Why `value` does not fit `schema` (a message starting with its path), or None if it does.

    Slow on purpose: it interprets the schema, and runs only after the predicate said no.
    """
    named = {} if named is None else named
    if isinstance(schema, list):
        if any(explain(b, value, named, namespace) is None for b in schema):
            return None
        kinds = [b if isinstance(b, str) else b.get("type") for b in schema]
        return f": expected one of {kinds}, got {_short(value)}"
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            what, fits = _PRIMITIVES[schema]
            return None if fits(value) else f": expected {what}, got {_short(value)}"
        return explain(_resolve(schema, named, namespace), value, named, namespace)
    kind, logical = schema["type"], schema.get("logicalType")
    if kind == "long" and logical in _TIMESTAMPS:
        return None if _timestamp(value) else f": expected timezone-aware datetime, got {_short(value)}"
    if logical is not None and kind not in ("record", "enum", "fixed"):
        return None
    if kind == "array":
        if not isinstance(value, list | tuple):
            return f": expected array, got {_short(value)}"
        errors = ((i, explain(schema["items"], x, named, namespace)) for i, x in enumerate(value))
        return next((f"[{i}]{err}" for i, err in errors if err is not None), None)
    if kind == "map":
        if not isinstance(value, dict):
            return f": expected map, got {_short(value)}"
        if bad_keys := [k for k in value if not isinstance(k, str)]:
            return f": map keys must be strings, got {_short(bad_keys[0])}"
        errs = ((k, explain(schema["values"], x, named, namespace)) for k, x in value.items())
        return next((f"[{k!r}]{err}" for k, err in errs if err is not None), None)
    if kind not in ("record", "enum", "fixed"):
        return explain(kind, value, named, namespace)
    full = fullname(schema, namespace)
    named[full] = schema
    if kind == "enum":
        ok = isinstance(value, str) and value in schema["symbols"]
        return None if ok else f": expected one of {schema['symbols']}, got {_short(value)}"
    if kind == "fixed":
        ok = isinstance(value, bytes | bytearray) and len(value) == schema["size"]
        return None if ok else f": expected {schema['size']} bytes, got {_short(value)}"
    if not isinstance(value, dict):
        return f": expected record {full}, got {_short(value)}"
    ns = full.rpartition(".")[0]
    for f in schema["fields"]:
        if f["name"] not in value:
            if "default" not in f:
                return f".{f['name']}: required field is missing"
        elif (err := explain(f["type"], value[f["name"]], named, ns)) is not None:
            return f".{f['name']}{err}"
    extra = sorted(set(value) - {f["name"] for f in schema["fields"]}, key=str)
    return f".{extra[0]}: no such field in {full}" if extra else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- Schemas ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EventSchema:
    """One version of one event's schema, ready for encoding/decoding."""

    name: str
    version: int
    schema: dict[str, Any]  # expanded JSON (envelope inlined): self-contained
    breaking: bool = False
    path: Path | None = None
    parsed: Any = field(init=False, repr=False)
    fingerprint: bytes = field(init=False)
    header: bytes = field(init=False, repr=False)
    fits: Pred = field(init=False, repr=False)
    defaults: dict[str, Any] = field(init=False, repr=False)
    payload_fields: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        try:
            set_(self, "parsed", fastavro.parse_schema(copy.deepcopy(self.schema)))
        except Exception as e:
            raise SchemaError(f"{self.path or self.name}: not a valid Avro schema: {e}") from e
        fp = schema_fingerprint(self.schema)
        set_(self, "fingerprint", fp)
        set_(self, "header", MARKER + fp)
        set_(self, "fits", compile_pred(self.schema))
        set_(self, "defaults", {f["name"]: _json_default(f) for f in self.schema["fields"] if "default" in f})
        set_(self, "payload_fields", frozenset(f["name"] for f in self.schema["fields"][1:]))


def _json_default(f: Mapping[str, Any]) -> Any:
    """Avro JSON defaults as Python values (bytes defaults are ISO-8859-1 strings)."""
    default = f["default"]
    kind = f["type"][0] if isinstance(f["type"], list) else f["type"]
    if kind in ("bytes", "fixed") and isinstance(default, str):
        return default.encode("latin-1")
    return default


def schema_fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO (Rabin) of the parsing canonical form, as the 8 little-endian wire bytes."""
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def expand_envelope(schema: dict[str, Any], envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with its `uds3.Envelope` reference replaced by the envelope's definition.

    Fingerprints must cover the whole writer schema (what a standard Avro reader computes), and
    history files must stay frozen even when the envelope evolves, so every version is stored
    and fingerprinted self-contained.
    """
    schema = copy.deepcopy(schema)
    fields = schema.get("fields") or []
    if fields and fields[0].get("name") == "envelope" and fields[0].get("type") == ENVELOPE_NAME:
        fields[0]["type"] = copy.deepcopy(dict(envelope))
    return schema


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SchemaError(f"{path}: {e}") from e
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object")
    return data


def _check_shape(schema: Mapping[str, Any], path: Path, name: str) -> None:
    if schema.get("type") != "record" or schema.get("name") != name:
        raise SchemaError(f"{path}: expected a record named {name!r}")
    if schema.get("namespace") != EVENT_NAMESPACE:
        raise SchemaError(f"{path}: namespace must be {EVENT_NAMESPACE!r}")
    fields = schema.get("fields") or []
    env = fields[0] if fields else {}
    env_type = env.get("type")
    if env.get("name") != "envelope" or not (
        env_type == ENVELOPE_NAME
        or (isinstance(env_type, dict) and fullname(env_type, "") == ENVELOPE_NAME)
    ):
        raise SchemaError(f"{path}: first field must be 'envelope' of type {ENVELOPE_NAME}")


class Registry:
    """All schema versions by fingerprint, and the current (reader) schema of each event."""

    def __init__(self, current: Mapping[str, EventSchema], history: Mapping[str, list[EventSchema]]):
        self.current = dict(current)
        self.history = {name: sorted(versions, key=lambda s: s.version) for name, versions in history.items()}
        self.by_fingerprint: dict[bytes, EventSchema] = {}
        for versions in self.history.values():
            for s in versions:
                self.by_fingerprint[s.fingerprint] = s
        for s in self.current.values():  # same canonical form as a history file: current wins
            self.by_fingerprint[s.fingerprint] = s

    @classmethod
    def load(cls, directory: Path = SCHEMAS_DIR) -> Registry:
        envelope = _load_json(directory / ENVELOPE_FILE)
        current: dict[str, EventSchema] = {}
        for path in sorted(directory.glob("*.avsc")):
            if path.name == ENVELOPE_FILE:
                continue
            raw = _load_json(path)
            _check_shape(raw, path, path.stem)
            version = raw.get(VERSION_ATTR, 1)
            if type(version) is not int or version < 1:
                raise SchemaError(f"{path}: {VERSION_ATTR} must be a positive integer")
            current[path.stem] = EventSchema(path.stem, version, expand_envelope(raw, envelope), path=path)
        history: dict[str, list[EventSchema]] = {}
        for path in sorted((directory / "history").glob("*.avsc")):
            m = _HISTORY_FILE.match(path.name)
            if not m:
                raise SchemaError(f"{path}: history files are named <Event>.v<N>.avsc")
            name, version = m["name"], int(m["version"])
            if name not in current or version >= current[name].version:
                raise SchemaError(f"{path}: no current schema {name} with a version above {version}")
            raw = _load_json(path)
            _check_shape(raw, path, name)
            breaking = raw.get(BREAKING_ATTR) is True
            schema = EventSchema(name, version, expand_envelope(raw, envelope), breaking, path)
            history.setdefault(name, []).append(schema)
        return cls(current, history)

    def encode(self, event: Event, version: int | None = None) -> bytes:
        """See `encode`; `version` writes with an older schema version (to test old producers)."""
        s = self.current.get(event.event_type) if version is None else self.version(event.event_type, version)
        if s is None:
            raise InvalidEvent(f"unknown event type {event.event_type!r}")
        payload = event.payload
        if type(payload) is not dict and not isinstance(payload, Mapping):
            raise InvalidEvent(f"{s.name}: payload must be a mapping, got {_short(payload)}")
        if not s.payload_fields.issuperset(payload):
            unknown = sorted(set(payload) - s.payload_fields, key=str)
            raise InvalidEvent(f"{s.name}.{unknown[0]}: no such field in {s.name} v{s.version}")
        record = dict(s.defaults)
        record.update(payload)
        record["envelope"] = {
            "event_id": event.event_id,
            "event_type": s.name,
            "document_id": event.document_id,
            "saga_id": event.saga_id,
            "causation_id": event.causation_id,
            "correlation_id": event.correlation_id,
            "occurred_at": event.occurred_at,
            "producer": event.producer,
            "schema_version": s.version,
        }
        if not s.fits(record):
            raise InvalidEvent(f"{s.name}{explain(s.schema, record) or ': does not fit the schema'}")
        out = io.BytesIO()
        out.write(s.header)
        try:
            fastavro.schemaless_writer(out, s.parsed, record)
        except Exception as e:  # defensive: the checker should have caught it
            raise InvalidEvent(f"{s.name}: {type(e).__name__}: {e}") from e
        return out.getvalue()

    def decode(self, data: bytes | bytearray | memoryview) -> Event:
        if not isinstance(data, bytes):
            if not isinstance(data, bytearray | memoryview):
                raise UndecodableEvent(f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        if len(data) < HEADER_SIZE:
            raise UndecodableEvent(f"too short for an Avro single-object frame ({len(data)} bytes)")
        if data[:2] != MARKER:
            raise UndecodableEvent(f"bad marker {data[:2].hex()}: not Avro single-object encoding")
        writer = self.by_fingerprint.get(data[2:HEADER_SIZE])
        if writer is None:
            raise UndecodableEvent(f"unknown schema fingerprint {data[2:HEADER_SIZE].hex()}")
        reader = self.current[writer.name]
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = cast(
                dict[str, Any],
                fastavro.schemaless_reader(body, writer.parsed, None if writer is reader else reader.parsed),
            )
        except Exception as e:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise UndecodableEvent(
                f"{writer.name} v{writer.version}: corrupt body or incompatible schema: "
                f"{type(e).__name__}: {e}"
            ) from e
        if body.tell() != len(data):
            raise UndecodableEvent(f"{writer.name}: {len(data) - body.tell()} trailing bytes after the body")
        env = record.pop("envelope")
        if env["event_type"] != writer.name:
            raise UndecodableEvent(f"envelope says {env['event_type']!r} but schema is {writer.name}")
        return Event(
            event_type=writer.name,
            document_id=env["document_id"],
            saga_id=env["saga_id"],
            payload=record,
            event_id=env["event_id"],
            causation_id=env["causation_id"],
            correlation_id=env["correlation_id"],
            occurred_at=env["occurred_at"],
            producer=env["producer"],
            schema_version=env["schema_version"],
        )

    def schema(self, event_type: str) -> EventSchema:
        try:
            return self.current[event_type]
        except KeyError:
            raise InvalidEvent(f"unknown event type {event_type!r}") from None

    def version(self, event_type: str, version: int) -> EventSchema:
        for s in [*self.history.get(event_type, ()), self.schema(event_type)]:
            if s.version == version:
                return s
        raise InvalidEvent(f"{event_type} has no schema version {version}")


REGISTRY = Registry.load()


def encode(event: Event) -> bytes:
    """The event as one single-object-encoded Avro message, written with its current schema.

    The envelope's schema_version is set to the current schema's version. Raises InvalidEvent
    (naming the field) when the type is unknown or the payload does not fit the schema.
    """
    return REGISTRY.encode(event)


def decode(data: bytes | bytearray | memoryview) -> Event:
    """The event in `data`, resolved to the current schema of its type.

    The payload holds every non-envelope field (defaults filled in); schema_version is the one it
    was written with. Raises UndecodableEvent for anything that is not a valid event.
    """
    return REGISTRY.decode(data)


def event_types() -> list[str]:
    """Every event type with a schema (sorted)."""
    return sorted(REGISTRY.current)


def schema_for(event_type: str) -> dict[str, Any]:
    """The current schema of `event_type`, as JSON with the envelope inlined (a copy)."""
    return copy.deepcopy(REGISTRY.schema(event_type).schema)


def schema_version(event_type: str) -> int:
    """The current schema version of `event_type` (what encode() writes into the envelope)."""
    return REGISTRY.schema(event_type).version
