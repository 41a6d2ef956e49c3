"""Codec throughput: encode + decode of one typical event (ChunkStored) on one core.

    .venv/bin/python bench/codec_bench.py [--seconds 6] [--event ChunkStored]

Prints a markdown table row: event, bytes on the wire, encode+decode pairs per second,
encode-only and decode-only rates, and for scale the bare fastavro write+read of the same record
(the floor under the codec: validation, framing and building the Event come on top).
Single process, single thread: the figures are per core.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import timeit
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastavro

from services.core import codec
from services.core.events import CHUNK_STORED, Event

SAMPLE_PAYLOADS = {
    CHUNK_STORED: {
        "operation_id": "0f9c2a4e-7d31-4b8e-9a55-3c1e2f6d8b70", "index": 57, "offset": 57 * 5 * 2**20,
        "length": 5 * 2**20, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    },
}


def typical_event(event_type: str) -> Event:
    """A realistic event: uuid ids everywhere, as the services emit them."""
    root = Event(event_type="DocumentSubmitted", document_id="3b1d7e52-5a0c-4f8e-8d2a-6c9b1e4f7a35",
                 saga_id="a4c2e9f1-0b7d-4d6a-9e3c-5f8a2b1c7d90", producer="client",
                 occurred_at=datetime(2025, 1, 1, tzinfo=UTC))
    event = root.follow(event_type, "uploader", seq=57, **SAMPLE_PAYLOADS[event_type])
    return replace(event, occurred_at=root.occurred_at)  # the wire keeps milliseconds only


def rates(fns: dict[str, Callable[[], object]], seconds: float, rounds: int = 15) -> dict[str, float]:
    """Calls per second of each function: the best of `rounds` short timed rounds.

    Rounds go round-robin over the functions, so whatever else the machine is doing
    disturbs all figures alike; the best round is the least disturbed. GC stays on.
    """
    number = {}
    for name, fn in fns.items():
        n = 100
        while timeit.timeit(fn, number=n) < 0.02:
            n *= 2
        number[name] = max(1, int(n * seconds / rounds / len(fns) / 0.02))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            timer = timeit.Timer(fn, setup="gc.enable()", globals={"gc": gc})
            best[name] = min(best[name], timer.timeit(number[name]) / number[name])
    return {name: 1 / t for name, t in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="total measuring time")
    parser.add_argument("--event", default=CHUNK_STORED, choices=sorted(SAMPLE_PAYLOADS))
    args = parser.parse_args()
    event = typical_event(args.event)
    data = codec.encode(event)
    assert codec.decode(data) == event
    schema = codec.REGISTRY.current[args.event].parsed
    record = fastavro.schemaless_reader(io.BytesIO(data[codec.HEADER_SIZE:]), schema, None)

    def bare() -> object:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, record)
        out.seek(0)
        return fastavro.schemaless_reader(out, schema, None)

    r = rates({
        "pair": lambda: codec.decode(codec.encode(event)),
        "encode": lambda: codec.encode(event),
        "decode": lambda: codec.decode(data),
        "bare": bare,
    }, args.seconds)
    pairs, enc, dec, floor = r["pair"], r["encode"], r["decode"], r["bare"]
    print("| event | bytes | encode+decode /s | encode /s | decode /s | bare fastavro write+read /s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {args.event} | {len(data)} | {pairs:,.0f} | {enc:,.0f} | {dec:,.0f} | {floor:,.0f} |")
    print(f"\n(best of 15 interleaved rounds, {args.seconds:g} s in all; load average "
          f"{os.getloadavg()[0]:.2f}; `.venv/bin/python bench/codec_bench.py`)")


if __name__ == "__main__":
    main()
