"""One trace per saga across the processes (OpenTelemetry), W3C trace context in Kafka headers.

The client's submit starts the trace; each step's handling of its trigger (or of its undo
trigger) is a span whose parent is the span that emitted that event, so the trace follows the
saga's causal chain, compensations included; upload chunks and embedding batches are child
spans. Events are published by the relay, later and maybe by another replica, so the emitting
span's `traceparent` is recorded with the event in the event store and put in the record's
headers when it is published.

Off unless configured, at no cost (the API's no-op tracer): `OTEL_EXPORTER_OTLP_ENDPOINT` sends
spans to a collector over OTLP/HTTP (the SDK's own variables apply); `UDS3_TRACE_DIR` writes
them as JSON lines, one file per process (tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context, propagate, trace

tracer = trace.get_tracer("uds3")
Headers = Sequence[tuple[str, bytes]]


def setup(service: str) -> None:
    """The process's tracer provider, if tracing is configured (call once, at start)."""
    endpoint, folder = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), os.environ.get("UDS3_TRACE_DIR")
    if not (endpoint or folder):
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        out = open(Path(folder) / f"{service}-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115 (process-long)
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # written at once: a SIGKILL loses none
    trace.set_tracer_provider(provider)


def traced(message: dict[str, Any]) -> dict[str, Any]:
    """An event's stored message with the current span's traceparent, when tracing."""
    traceparent = current_traceparent()
    return {**message, "traceparent": traceparent} if traceparent else message


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (None when not tracing)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def headers(traceparent: str | None) -> list[tuple[str, bytes]] | None:
    """Kafka record headers that carry a traceparent."""
    return [("traceparent", traceparent.encode())] if traceparent else None


def context_of(headers: Headers | None = None, traceparent: str | None = None) -> context.Context:
    """The context a record's headers (or a recorded traceparent) carry on."""
    carrier: Mapping[str, str] = {k: v.decode(errors="replace") for k, v in headers or () if k == "traceparent"}
    if traceparent:
        carrier = {"traceparent": traceparent}
    return propagate.extract(carrier)


@contextmanager
def span(name: str, parent: context.Context | None = None, **attributes: Any) -> Iterator[trace.Span]:
    """A span, current while the block runs, as a child of `parent` (else of the current span)."""
    with tracer.start_as_current_span(name, context=parent, attributes=attributes) as current:
        yield current
