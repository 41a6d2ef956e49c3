"""One saga is one trace across the six service processes: the client's submit span is the
root, each step's span is a child of the span that emitted its trigger (W3C trace context in
the Kafka record headers), and upload chunks and embedding batches are children of their step."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.core.events import DOCUMENT_COMPLETED
from services.core.saga import SAGA, SERVICES
from tests.documents import paragraph, pdf_file
from tests.e2e.test_vector_e2e import submit_all
from tests.running import Services

pytestmark = pytest.mark.stack


def spans_of(folder: Path, trace_id: str) -> list[dict[str, Any]]:
    """Every span the services wrote (one JSON line each) of one trace."""
    found = [json.loads(line) for f in folder.glob("*.jsonl") for line in f.read_text().splitlines() if line]
    return [s for s in found if s["context"]["trace_id"] == trace_id]


def test_one_saga_is_one_trace_across_the_six_processes(services: Services, run_dir: Path) -> None:
    exporter = InMemorySpanExporter()  # this process is the client: its submit span is the root
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    pdf = pdf_file(run_dir, "traced.pdf", [paragraph(i, 1500) for i in range(30)])  # several embedding batches
    (outcome,) = submit_all([pdf])
    assert outcome.event_type == DOCUMENT_COMPLETED, outcome.payload
    (submit,) = [s for s in exporter.get_finished_spans() if s.name == "submit"
                 and s.attributes is not None and s.attributes["document_id"] == outcome.document_id]
    trace_id = f"0x{submit.context.trace_id:032x}"

    spans = spans_of(run_dir / "traces", trace_id)
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == set(SERVICES)
    parent, started = f"0x{submit.context.span_id:016x}", datetime.min
    for step in SAGA:  # the causal chain: each step's span is a child of the one before
        mine = [s for s in spans if s["name"] == f"{step.service} {step.trigger}" and s["parent_id"] == parent]
        assert len(mine) == 1, (step.service, [(s["name"], s["parent_id"]) for s in spans])
        work = mine[0]
        # A trigger that arrived before the inputs the step needs is parked; its work runs when the
        # last of them arrives, in a span of the same name under the trigger's.
        while nested := [s for s in spans
                         if s["parent_id"] == work["context"]["span_id"] and s["name"] == work["name"]]:
            work = nested[0]
        begun = datetime.fromisoformat(work["start_time"].replace("Z", "+00:00")).replace(tzinfo=None)
        assert begun >= started, f"{step.service} started before the step that caused it"
        parent, started = work["context"]["span_id"], begun
        children = {s["name"] for s in spans if s["parent_id"] == parent}
        if step.service == "uploader":
            assert "store chunk" in children, children
        if step.service == "vector":
            assert sum(1 for s in spans if s["parent_id"] == parent and s["name"] == "embed batch") >= 2
