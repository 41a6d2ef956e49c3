"""Figure 5: small documents through the six service processes, next to the same steps in one process.

Phases, each after one warm-up document:
1. six processes, N documents submitted at once: throughput, latency, CPU seconds per saga;
2. six processes, N documents at a steady rate (half the burst throughput): latency, stages;
3. one process (`bench.inproc`), PostgreSQL event stores, documents one after another;
4. the same with in-memory event stores (what the event store costs).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from bench import documents, procfs
from bench.env import Run
from bench.flow import MILESTONES, Ingested, ingest_sync
from bench.inproc import InProcess, submission
from bench.report import Section
from bench.services import ALL, Services
from bench.stack import server_cpu
from services.core import topics
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPLETED

N, QUICK_N, CHARS = 200, 20, 200


@dataclass
class Phase:
    name: str
    sagas_per_s: float
    latencies: list[float]  # seconds
    cpu_per_saga: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds per saga
    stages: dict[str, float] = field(default_factory=dict)  # stage -> mean seconds
    reached: dict[str, float] = field(default_factory=dict)  # milestone -> s from first submit to the last doc's
    events_per_saga: int = 0  # on the saga topics (each consumed by all six services)

    def row(self, n: int) -> list[str]:
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1000
        return [self.name, str(n), f"{self.sagas_per_s:.1f}", f"{p50:.0f}", f"{p99:.0f}",
                f"{max(self.latencies) * 1000:.0f}",
                f"{sum(self.cpu_per_saga.values()) * 1000:.0f}" if self.cpu_per_saga else ""]


class CpuMeter:
    """CPU seconds used by named process groups between `start()` and `per_saga()`."""

    def __init__(self, running: Services | None = None) -> None:
        self.running = running

    def read(self) -> dict[str, float]:
        own = {"harness (this process)": procfs.cpu_seconds([os.getpid()])}
        services = self.running.cpu_seconds() if self.running else {}
        return {**services, **server_cpu(), **own}

    def start(self) -> None:
        self.before = self.read()

    def per_saga(self, n: int) -> dict[str, float]:
        after = self.read()
        return {k: (after[k] - self.before.get(k, 0.0)) / n for k in after}


def through_services(r: Run, n: int) -> tuple[Phase, Phase]:
    paths = [documents.small_text(r.env.run_dir, i, CHARS) for i in range(n)]
    with Services(ALL, r.env.service_env()) as running:
        ingest_sync(paths[:1], 180, running=running)
        cpu = CpuMeter(running)
        cpu.start()
        burst = ingest_sync(paths, timeout=120 + n, running=running)
        burst_cpu = cpu.per_saga(n)
        rate = _throughput(burst)
        steady = ingest_sync(paths, timeout=120 + n / (rate / 2), rate=rate / 2, running=running)
    doc = next(iter(burst.done))
    saga_topics = {t.name for t in topics.SAGA_TOPICS}
    events = sum(1 for seen in burst.tap.seen[doc] if seen.topic in saga_topics)
    return (
        Phase("6 processes, all at once", rate, _latencies(burst), burst_cpu, _stages(burst), _reached(burst), events),
        Phase(f"6 processes, steady {rate / 2:.1f}/s", rate / 2, _latencies(steady), {}, _stages(steady)),
    )


def in_process(r: Run, n: int, event_store: str) -> Phase:
    paths = [documents.small_text(r.env.run_dir, i, CHARS) for i in range(n)]
    with InProcess(Settings(), event_store) as one:
        one.saga(submission(paths[0]))
        cpu = CpuMeter()
        cpu.start()
        latencies, started = [], time.perf_counter()
        for path in paths:
            t = time.perf_counter()
            outcome = one.saga(submission(path))
            latencies.append(time.perf_counter() - t)
            assert outcome.event_type == DOCUMENT_COMPLETED, outcome
        total = time.perf_counter() - started
        return Phase(f"1 process, {'PostgreSQL' if event_store == 'postgres' else 'in-memory'} event store",
                     n / total, latencies, cpu.per_saga(n))


def _throughput(ing: Ingested) -> float:
    return len(ing.done) / (max(s.received for s in ing.done.values()) - min(ing.submitted.values()))


def _latencies(ing: Ingested) -> list[float]:
    return [ing.latency(doc) for doc in ing.done]


def _reached(ing: Ingested) -> dict[str, float]:
    """When the last document reached each milestone, in seconds after the first submit."""
    start = min(ing.submitted_wall.values())
    return {event_type: max(ing.occurred(doc, event_type) for doc in ing.done) - start for _, event_type in MILESTONES}


def _stages(ing: Ingested) -> dict[str, float]:
    per_doc = [ing.stages(doc) for doc in ing.done]
    return {stage: float(np.mean([d[stage] for d in per_doc])) for stage in per_doc[0]}


def run(r: Run) -> Section:
    (n,) = r.sizes_for("small", [N], [QUICK_N])
    burst, steady = through_services(r, n)
    phases = [burst, steady, in_process(r, n, "postgres"), in_process(r, n, "memory")]
    for p in phases:
        print(f"  small: {p.name}: {p.sagas_per_s:.1f} sagas/s, p50 {np.percentile(p.latencies, 50) * 1000:.0f} ms, "
              f"p99 {np.percentile(p.latencies, 99) * 1000:.0f} ms", flush=True)
    s = Section("small", r.command, r.quick, f"{n} text documents of {CHARS} characters (one chunk each), per phase")
    s.table(["mode", "documents", "sagas/s", "latency p50 ms", "latency p99 ms", "max ms",
             "CPU ms per saga (all processes)"],
            [p.row(n) for p in phases])
    s.table(["stage (mean ms)", burst.name, steady.name],
            [[stage, f"{burst.stages[stage] * 1000:.0f}", f"{steady.stages[stage] * 1000:.0f}"]
             for stage in [m for m, _ in MILESTONES] + ["completions topic -> bench"]])
    s.table(["milestone (all at once)", "last document reached it, s after the first submit", "documents/s so far"],
            [[m, f"{t:.1f}", f"{n / t:.1f}"] for m, t in burst.reached.items()])
    names = list(dict.fromkeys([*burst.cpu_per_saga, *phases[2].cpu_per_saga]))
    s.table(["CPU ms per saga", burst.name, phases[2].name, phases[3].name],
            [[k, *(f"{p.cpu_per_saga[k] * 1000:.1f}" if k in p.cpu_per_saga else "" for p in (burst, *phases[2:]))]
             for k in names])
    cores = os.cpu_count() or 1
    s.verdicts.append(f"6 processes: {burst.sagas_per_s:.1f} sagas/s = {1000 / burst.sagas_per_s:.0f} ms per saga "
                      f"of wall time; {sum(burst.cpu_per_saga.values()) * 1000:.0f} ms of CPU per saga over {cores} "
                      f"cores (CPU-bound when CPU per saga ~ {cores} x wall per saga)")
    s.verdicts.append(f"1 process vs 6 processes: x{phases[2].sagas_per_s / burst.sagas_per_s:.2f} throughput "
                      f"with PostgreSQL event stores, x{phases[3].sagas_per_s / burst.sagas_per_s:.2f} in memory")
    s.notes += [
        f"Each saga puts {burst.events_per_saga} events on the saga topics (one per producer); every service "
        f"consumes every one ({burst.events_per_saga * 6} deliveries per saga), and the security service also "
        "handles every one (its audit trail: a PostgreSQL transaction under one advisory lock, then the event "
        "store's record).",
        "Milestones: the stage whose `documents/s so far` drops the most is the one the others wait for.",
        "Latency: submit -> DocumentCompleted read from the completions topic by the harness. `all at once`: "
        "every document submitted back to back (queueing included); `steady`: submitted at half the burst "
        "throughput.",
        "One process: `Runtime.process()` of each of the six services' runtimes, called in turn for every "
        "recorded event (the relay's work without Kafka), documents one after another, real chunk store, "
        "Milvus (the stack's milvus-lite server), Neo4j and PostgreSQL tables; event stores in PostgreSQL "
        "(as the services) or in memory.",
        "CPU per saga: user + system time of each process between the phase's start and end, divided by the "
        "documents; the stack servers are shared with other users, so theirs may include foreign work.",
        "Stages (mean of the documents, from the events' occurred_at) include each hop through Kafka.",
        "DESIGN.md section 6 names 1 MB documents here; these are one-chunk documents, which measure the "
        "saga's own per-document cost. A 1 MB text document is ~1,100 chunks, i.e. its sagas/s is set by the "
        "embedding (figure 3).",
    ]
    return s
