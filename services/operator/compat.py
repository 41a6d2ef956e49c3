"""Schema evolution check: every kept version must still resolve against the current one.

The check is not a structural guess: it writes deterministic sample data with one schema and
reads it back through fastavro's own schema resolution into the other, in both directions
(backward: old data, current reader; forward: current data, old reader). The samples walk every
union branch and enum symbol, so a branch or symbol that only some data uses is still covered.

    python -m services.operator.compat                 # check all schemas (CI), exit 1 on a break
    python -m services.operator.compat --snapshot NAME # keep NAME's current schema as history first
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro

from services.core.codec import (
    BREAKING_ATTR,
    REGISTRY,
    SCHEMAS_DIR,
    VERSION_ATTR,
    Registry,
    fullname,
)

_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 42)
_LONGS = (0, 1, -1, 2**63 - 1, -(2**63), 5 * 2**20)
_DOUBLES = (0.0, 1.5, -2.25, 1e300)
_STRINGS = ("", "a", "ünïcödé ✓", "x" * 40)
_BYTES = (b"", b"\x00\xff", bytes(range(32)))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLIS = (0, 1_700_000_000_123, 253_402_300_799_999)  # epoch, 2023, 9999-12-31
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def samples(schema: Any, count: int = 24) -> Iterator[Any]:
    """`count` deterministic, valid values of `schema` (JSON form, self-contained)."""
    for i in range(count):
        yield _sample(schema, i, {}, "", 0)


def _sample(schema: Any, i: int, named: dict[str, Any], ns: str, depth: int) -> Any:
    if isinstance(schema, list):
        branches = schema
        if depth > 4 and "null" in branches:
            return None
        return _sample(branches[i % len(branches)], i, named, ns, depth + 1)
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            full = schema if "." in schema or not ns else f"{ns}.{schema}"
            return _sample(named[full], i, named, ns, depth + 1)
        return _primitive(schema, i)
    kind, logical = schema["type"], schema.get("logicalType")
    if kind == "long" and logical == "timestamp-millis":
        return _EPOCH + timedelta(milliseconds=_MILLIS[i % len(_MILLIS)])
    if kind in ("record", "enum", "fixed"):
        full = fullname(schema, ns)
        named[full] = schema
        ns = full.rpartition(".")[0]
    if kind == "record":
        fields = schema["fields"]
        return {f["name"]: _sample(f["type"], i + j, named, ns, depth + 1) for j, f in enumerate(fields)}
    if kind == "enum":
        return schema["symbols"][i % len(schema["symbols"])]
    if kind == "fixed":
        return bytes((i + k) % 256 for k in range(schema["size"]))
    n = 0 if depth > 4 else i % 3
    if kind == "array":
        return [_sample(schema["items"], i + k, named, ns, depth + 1) for k in range(n)]
    if kind == "map":
        return {f"k{k}": _sample(schema["values"], i + k, named, ns, depth + 1) for k in range(n)}
    return _sample(kind, i, named, ns, depth)


def _primitive(kind: str, i: int) -> Any:
    table: dict[str, Any] = {
        "null": (None,), "boolean": (False, True), "int": _INTS, "long": _LONGS,
        "float": (0.0, 1.5, -2.25), "double": _DOUBLES, "bytes": _BYTES, "string": _STRINGS,
    }
    values = table[kind]
    return values[i % len(values)]


def resolution_errors(writer: Mapping[str, Any], reader: Mapping[str, Any], count: int = 24) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (empty: it always can)."""
    w = fastavro.parse_schema(copy.deepcopy(dict(writer)))
    r = fastavro.parse_schema(copy.deepcopy(dict(reader)))
    for i, datum in enumerate(samples(writer, count)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, w, datum)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, w, r)
        except Exception as e:  # SchemaResolutionError, or anything resolution trips over
            return [f"sample {i}: {type(e).__name__}: {e}"]
    return []


def compatibility_errors(old: Mapping[str, Any], new: Mapping[str, Any], count: int = 24) -> list[str]:
    """Backward (old data, new reader) and forward (new data, old reader) problems."""
    return [f"backward: {e}" for e in resolution_errors(old, new, count)] + [
        f"forward: {e}" for e in resolution_errors(new, old, count)
    ]


def check_registry(registry: Registry = REGISTRY) -> list[str]:
    """Every non-breaking history version against its current schema."""
    problems = []
    for name, versions in sorted(registry.history.items()):
        current = registry.current[name]
        for old in versions:
            if old.breaking:
                continue
            for err in compatibility_errors(old.schema, current.schema):
                problems.append(f"{name} v{old.version} -> v{current.version}: {err}")
    return problems


def snapshot(name: str, directory: Path = SCHEMAS_DIR, registry: Registry = REGISTRY) -> Path:
    """Freeze `name`'s current schema (envelope inlined) as history, before changing it."""
    current = registry.schema(name)
    path = directory / "history" / f"{name}.v{current.version}.avsc"
    if path.exists():
        raise FileExistsError(f"{path} exists: bump {VERSION_ATTR} in {name}.avsc first")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(current.schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.operator.compat", description=__doc__)
    parser.add_argument("--snapshot", metavar="EVENT", help="copy EVENT's current schema into history/")
    args = parser.parse_args(argv)
    if args.snapshot:
        path = snapshot(args.snapshot)
        print(f"wrote {path}; now raise {VERSION_ATTR} in {args.snapshot}.avsc and make the change")
        return 0
    problems = check_registry()
    for p in problems:
        print(p)
    kept = sum(len(v) for v in REGISTRY.history.values())
    print(f"{len(REGISTRY.current)} schemas, {kept} earlier versions: "
          f"{'INCOMPATIBLE' if problems else 'compatible'} (mark a deliberate break with "
          f'"{BREAKING_ATTR}": true in the history file)')
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
