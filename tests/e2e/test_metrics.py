"""Each service's Prometheus endpoint, scraped during a real run: the counters move by exactly
what one document made each service do."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.core.events import DOCUMENT_COMPLETED, DOCUMENT_SUBMITTED, GRAPH_LINKED, SECURITY_RECORDED
from tests.documents import paragraph, pdf_file
from tests.e2e.test_vector_e2e import indexed, submit_all
from tests.running import Services

pytestmark = pytest.mark.stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, wait_s: float = 0) -> Samples:
    """The endpoint's samples; waits up to `wait_s` for a service that is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_each_service_counts_what_one_document_made_it_do(services: Services, run_dir: Path) -> None:
    ports = {name: p.metrics_port for name, p in services.procs.items()}
    assert all(ports.values()), ports
    before = {name: scrape(port, wait_s=120) for name, port in ports.items()}
    pdf = pdf_file(run_dir, "metrics.pdf", [paragraph(i, 1500) for i in range(4)])
    (outcome,) = submit_all([pdf])
    assert outcome.event_type == DOCUMENT_COMPLETED, outcome.payload
    after = {name: scrape(port) for name, port in ports.items()}

    up, vec, rel = before["uploader"], before["vector"], before["relational"]
    assert moved(up, after["uploader"], "uds3_events_total", event_type=DOCUMENT_SUBMITTED, outcome="handled") == 1
    assert moved(up, after["uploader"], "uds3_upload_bytes_total") == pdf.stat().st_size
    # Its trigger is handled at once, or parked until the inputs it needs arrive (then another event runs it).
    assert sum(moved(vec, after["vector"], "uds3_events_total", event_type=SECURITY_RECORDED, outcome=outcome)
               for outcome in ("handled", "parked")) == 1
    assert moved(vec, after["vector"], "uds3_embedded_chunks_total") == indexed(outcome.document_id)["chunk_count"] > 0
    assert moved(rel, after["relational"], "uds3_handle_seconds_count", event_type=GRAPH_LINKED) == 1
    for name in ports:  # nothing retried, compensated or dead-lettered for a good document
        assert moved(before[name], after[name], "uds3_dead_letters_total") == 0
        assert moved(before[name], after[name], "uds3_compensations_total", outcome="done") == 0
    lags = [k for k in after["vector"] if k[0] == "uds3_consumer_lag"]
    assert lags and all(after["vector"][k] >= 0 for k in lags)
