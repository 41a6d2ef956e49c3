"""Figure 5: small documents through the six service processes, next to the same steps in one process.

Phases, after one warm-up document:
1. six processes, documents one after another on an idle system: the latency of a single saga;
2. six processes, N documents submitted at once (200 and 2,000): throughput, latency, CPU per saga
   of each process, and which process and stage bound the rate;
3. six processes, documents at a steady rate (25/s, or less when the burst rate is below it);
4. one process (`bench.inproc`), PostgreSQL event stores, documents one after another;
5. the same with in-memory event stores (what the event store costs).
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

BURSTS, QUICK_BURSTS = [200, 2000], [20, 40]  # documents submitted at once
SINGLE, QUICK_SINGLE = 20, 5  # documents one after another
IN_PROCESS = 200
STEADY_RATE, STEADY_S = 25.0, 20  # the goal's rate (sagas/s), and how long to keep it up
CHARS = 200


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


def through_services(r: Run, bursts: list[int]) -> list[Phase]:
    total = SINGLE + sum(bursts) + int(STEADY_RATE * STEADY_S) + 1
    paths = [documents.small_text(r.env.run_dir, i, CHARS) for i in range(total)]
    phases = []
    with Services(ALL, r.env.service_env()) as running:
        ingest_sync(paths[:1], 180, running=running)
        used = 1
        single = SINGLE if not r.quick else QUICK_SINGLE
        one = ingest_sync(paths[used:used + single], 60, running=running, one_at_a_time=True)
        used += single
        phases.append(Phase("6 processes, one at a time (idle)", _throughput(one), _latencies(one), {},
                            _stages(one)))
        rate = 0.0
        for n in bursts:
            cpu = CpuMeter(running)
            cpu.start()
            burst = ingest_sync(paths[used:used + n], timeout=120 + n, running=running)
            used += n
            rate = _throughput(burst)
            saga_topics = {t.name for t in topics.SAGA_TOPICS}
            events = sum(1 for seen in burst.tap.seen[next(iter(burst.done))] if seen.topic in saga_topics)
            phases.append(Phase(f"6 processes, {n} at once", rate, _latencies(burst), cpu.per_saga(n),
                                _stages(burst), _reached(burst), events))
        steady_rate = min(STEADY_RATE, round(0.6 * rate, 1))  # below the last burst's rate: no queue builds up
        n = int(steady_rate * STEADY_S)
        steady = ingest_sync(paths[used:used + n], timeout=120 + STEADY_S * 2, rate=steady_rate, running=running)
        phases.append(Phase(f"6 processes, steady {steady_rate:g}/s", steady_rate, _latencies(steady), {},
                            _stages(steady)))
    return phases


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
    bursts = r.sizes_for("small", BURSTS, QUICK_BURSTS)
    six = through_services(r, bursts)
    single, steady, bursts_run = six[0], six[-1], six[1:-1]
    burst = bursts_run[-1]  # the largest: the figures below are its
    n_in = IN_PROCESS if not r.quick else QUICK_BURSTS[0]
    alone = [in_process(r, n_in, "postgres"), in_process(r, n_in, "memory")]
    phases = [single, *bursts_run, steady, *alone]
    for p in phases:
        print(f"  small: {p.name}: {p.sagas_per_s:.1f} sagas/s, p50 {np.percentile(p.latencies, 50) * 1000:.0f} ms, "
              f"p99 {np.percentile(p.latencies, 99) * 1000:.0f} ms", flush=True)
    s = Section("small", r.command, r.quick, f"text documents of {CHARS} characters (one chunk each): one at a "
                f"time, {' and '.join(map(str, bursts))} at once, {STEADY_S} s at a steady rate, {n_in} in one process")
    s.table(["mode", "documents", "sagas/s", "latency p50 ms", "latency p99 ms", "max ms",
             "CPU ms per saga (all processes)"],
            [p.row(len(p.latencies)) for p in phases])
    s.table(["stage (mean ms)", single.name, burst.name, steady.name],
            [[stage, *(f"{p.stages[stage] * 1000:.0f}" for p in (single, burst, steady))]
             for stage in [m for m, _ in MILESTONES] + ["completions topic -> bench"]])
    n = len(burst.latencies)
    s.table(["milestone (" + burst.name + ")", "last document reached it, s after the first submit",
             "documents/s so far"],
            [[m, f"{t:.1f}", f"{n / t:.1f}"] for m, t in burst.reached.items()])
    columns = [*bursts_run, *alone]
    names = list(dict.fromkeys(k for p in columns for k in p.cpu_per_saga))
    s.table(["CPU ms per saga", *(p.name for p in columns)],
            [[k, *(f"{p.cpu_per_saga[k] * 1000:.1f}" if k in p.cpu_per_saga else "" for p in columns)]
             for k in names])
    cores = os.cpu_count() or 1
    total = sum(burst.cpu_per_saga.values())
    work = {k: v for k, v in burst.cpu_per_saga.items() if not k.startswith("harness")}
    top = sorted(work, key=lambda k: -work[k])[:3]
    rates = [n / t for t in burst.reached.values()]
    slowest = min(range(1, len(rates)), key=lambda i: rates[i] / rates[i - 1])
    s.verdicts.append(f"{burst.name}: {burst.sagas_per_s:.1f} sagas/s = {1000 / burst.sagas_per_s:.0f} ms per saga "
                      f"of wall time; {total * 1000:.0f} ms of CPU per saga over {cores} cores (CPU-bound when CPU "
                      f"per saga ~ {cores} x wall per saga: {total * burst.sagas_per_s / cores:.0%} of the cores)")
    s.verdicts.append("what bounds it: the most CPU per saga is "
                      + ", ".join(f"{k} {work[k] * 1000:.1f} ms" for k in top)
                      + f"; the stage the others wait for is {list(burst.reached)[slowest]} "
                      f"({rates[slowest - 1]:.1f} -> {rates[slowest]:.1f} documents/s)")
    s.verdicts.append(f"goals (issue 19): >= 50 sagas/s at once: {burst.sagas_per_s:.1f}; <= 40 ms CPU per saga: "
                      f"{total * 1000:.0f}; single saga p50 <= 100 ms: "
                      f"{np.percentile(single.latencies, 50) * 1000:.0f}; steady 25/s p50 <= 150 / p99 <= 500 ms: "
                      f"{steady.sagas_per_s:g}/s gave {np.percentile(steady.latencies, 50) * 1000:.0f} / "
                      f"{np.percentile(steady.latencies, 99) * 1000:.0f} ms")
    s.verdicts.append(f"1 process vs 6 processes: x{alone[0].sagas_per_s / burst.sagas_per_s:.2f} throughput "
                      f"with PostgreSQL event stores, x{alone[1].sagas_per_s / burst.sagas_per_s:.2f} in memory")
    s.notes += [
        f"Each saga puts {burst.events_per_saga} events on the saga topics (one per producer); each service "
        "reads the topics that carry an event it acts on, keeps or notes, and the security service notes every "
        "one (its audit trail).",
        "Each service processes a fetch's inputs of one partition as a batch: one worker thread, one event-store "
        "transaction with the batch's last position, the audit entries of the batch appended at once.",
        "Milestones: the stage whose `documents/s so far` drops the most is the one the others wait for.",
        "Latency: submit -> DocumentCompleted read from the completions topic by the harness. `one at a time`: "
        "each submitted once the one before completed; `at once`: submitted 32 at a time without waiting "
        "(queueing included); `steady`: submitted at a fixed rate, 25/s or 0.6 x the last burst's rate if that "
        "is lower (a rate above the capacity only measures a growing queue).",
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
