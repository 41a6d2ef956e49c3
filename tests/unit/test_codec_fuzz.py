"""Fuzzing the codec: bad bytes only ever raise UndecodableEvent, bad payloads only InvalidEvent.

A consumer dead-letters on UndecodableEvent and keeps going (G8); any other exception type
escaping decode() would crash it instead, so that is what these tests hunt for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import codec
from services.core.codec import InvalidEvent, UndecodableEvent
from services.core.events import Event
from services.operator.compat import samples

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = sorted(codec.event_types())
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _valid_frames() -> list[bytes]:
    frames = []
    for name in TYPES:
        for record in samples(codec.schema_for(name), 4):
            env = record.pop("envelope")
            frames.append(codec.encode(Event(name, env["document_id"], env["saga_id"], record,
                                             event_id=env["event_id"] or "e", occurred_at=env["occurred_at"])))
    return frames


FRAMES = _valid_frames()
HEADERS = sorted({s.header for s in codec.REGISTRY.by_fingerprint.values()})


def decodes_or_rejects(data: bytes) -> None:
    try:
        event = codec.decode(data)
    except UndecodableEvent:
        return
    assert isinstance(event, Event) and event.event_type in TYPES


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    decodes_or_rejects(data)


@FUZZ
@given(st.sampled_from(HEADERS), st.binary(max_size=512))
def test_random_body_behind_a_known_fingerprint(header: bytes, body: bytes) -> None:
    decodes_or_rejects(header + body)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(FRAMES)))
    kind = draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del frame[draw(st.integers(0, len(frame) - 1)):]
    elif kind == "append":
        frame += draw(st.binary(min_size=1, max_size=64))
    else:  # overwrite a run of bytes, e.g. a length prefix, with anything
        i = draw(st.integers(0, len(frame) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        frame[i:i + len(junk)] = junk
    return bytes(frame)


@FUZZ
@given(mutated_frames())
def test_mutated_valid_frames(data: bytes) -> None:
    decodes_or_rejects(data)


def test_every_truncation_of_every_frame_is_rejected() -> None:
    for frame in FRAMES:
        for cut in range(len(frame)):
            try:
                codec.decode(frame[:cut])
            except UndecodableEvent:
                continue
            raise AssertionError(f"a frame cut to {cut} of {len(frame)} bytes decoded")


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
    st.binary(max_size=8), st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
)


@st.composite
def fuzzed_payloads(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(TYPES))
    payload = next(iter(samples(codec.schema_for(name), 1)))
    payload.pop("envelope")
    for field in draw(st.lists(st.sampled_from([*payload, "unknown_field"]), max_size=3)):
        if draw(st.booleans()):
            payload[field] = draw(JUNK)
        else:
            payload.pop(field, None)
    return name, payload


@FUZZ
@given(fuzzed_payloads())
def test_encode_rejects_bad_payloads_with_invalid_event_only(case: tuple[str, dict[str, Any]]) -> None:
    name, payload = case
    event = Event(name, "doc", "saga", payload, event_id="e", occurred_at=T0)
    try:
        data = codec.encode(event)
    except InvalidEvent as e:
        assert str(e).startswith(name)
        return
    decoded = codec.decode(data)  # whatever encode accepted must decode to the same fields
    assert {k: decoded.payload[k] for k in payload} == payload
