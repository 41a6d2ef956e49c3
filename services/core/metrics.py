"""Prometheus metrics of one service process (prometheus-client), served at
`http://UDS3_METRICS_ADDR:UDS3_METRICS_PORT/metrics` when a port is set (`uds3 services up`
gives each replica its own: docs/operating.md). One process runs one service, so the metrics
carry no service label: the scrape target says which it is.

Counters only go up; rates (bytes/s, chunks/s, events/s) are PromQL's `rate()` of them.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS = Counter("uds3_events", "Events consumed, by type and what the service did with them "
                 "(handled, parked, duplicate, seen, refused, observed, ignored, dead-lettered, ...)",
                 ["event_type", "outcome"])
HANDLE_SECONDS = Histogram("uds3_handle_seconds", "Time to handle one input that the step acts on, retries included",
                           ["event_type"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                                    120, 300, 600))
RETRIES = Counter("uds3_retries", "Transient faults retried (a store or the broker out of reach)")
COMPENSATIONS = Counter("uds3_compensations", "Undos of this step's work, by outcome", ["outcome"])
DEAD_LETTERS = Counter("uds3_dead_letters", "Messages sent to the dead-letter topic")
LAG = Gauge("uds3_consumer_lag", "Messages between this consumer's position and the end of each assigned partition",
            ["topic", "partition"])
IN_FLIGHT = Gauge("uds3_sagas_in_flight", "Sagas whose input reached this step and that have not ended, as this "
                  "process has seen them since it started")
UPLOAD_BYTES = Counter("uds3_upload_bytes", "Bytes the uploader stored in the chunk store")
EMBEDDED_CHUNKS = Counter("uds3_embedded_chunks", "Text chunks the vector step embedded and upserted")


def serve(port: int, addr: str, log: logging.Logger) -> None:
    """Starts the /metrics endpoint (a thread); a port in use costs the metrics, not the service."""
    if not port:
        return
    try:
        start_http_server(port, addr=addr)
        log.info("metrics on http://%s:%d/metrics", addr, port)
    except OSError as e:
        log.warning("no metrics endpoint: %s:%d: %s", addr, port, e)
