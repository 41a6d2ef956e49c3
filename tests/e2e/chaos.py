"""Chaos run: many sagas at once while services are SIGKILLed and restarted at random moments.

    python -m tests.e2e.chaos --sagas 50 --kills 200          # `make chaos`
    python -m tests.e2e.chaos --sagas 20 --kills 20 --outage   # + PostgreSQL and Neo4j frozen mid-run

It starts the six services (own topic prefix, chunk store and Milvus file in a temporary
folder), submits documents spread over the kill phase (good ones, and ones made to fail at
each step through the fault spec below), kills a random service every second or two and
restarts it, then waits for every saga's terminal event and checks:

* lost: a saga with no terminal event (G1);
* unexpected: a terminal event other than the document's expected one (a good document that
  did not complete, a failing one that did not compensate from its step);
* violations: the consistency audit (services.operator.consistency, G2) over every document of
  the run, plus the audit trail's hash chain;
* duplicate effects (G3): a document with terminal events of different ids on the
  completions topic, or any (document, event type) published with different event ids.

Exit status 1 when any of those is non-zero. `--outage` freezes PostgreSQL and Neo4j
(SIGSTOP/SIGCONT, a few seconds) in the middle of the run and submits good documents only:
everything must complete, nothing may be compensated. The stores and Kafka are the shared
native stack (`make up`); nothing else of it is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

# The same faults as the e2e tests (tests/conftest.py), matched by title.
FAULT_SPEC = (
    "uploader:permanent@fail-upload,verifier:permanent@fail-integrity,security:permanent@fail-security,"
    "vector:permanent@fail-vectors,graph:permanent@fail-graph,relational:permanent@fail-relational,"
    "graph:transient:2@flaky-graph,graph:undo-permanent@stuck-undo"
)
# What each kind of document is, and how its saga must end.
KINDS: dict[str, tuple[str, str | None]] = {
    "good": ("DocumentCompleted", None),
    "flaky-graph": ("DocumentCompleted", None),
    "fail-upload": ("DocumentCompensated", "Upload"),
    "fail-integrity": ("DocumentCompensated", "Integrity"),
    "fail-security": ("DocumentCompensated", "Security"),
    "fail-vectors": ("DocumentCompensated", "Vectors"),
    "fail-graph": ("DocumentCompensated", "Graph"),
    "fail-relational": ("DocumentCompensated", "Relational"),
    "stuck-undo": ("CompensationFailed", "Relational"),
}
# The first ten cover every step's failure; then two good documents for each failing one.
MIX = ["good", "fail-vectors", "good", "fail-relational", "flaky-graph", "fail-upload", "good", "fail-graph",
       "fail-integrity", "fail-security", "good", "stuck-undo"]
MORE = ["good", "good", "fail-vectors", "good", "good", "fail-relational", "good", "flaky-graph", "good",
        "fail-graph", "good", "fail-security", "good", "fail-integrity", "good", "fail-upload"]


@dataclass
class Doc:
    kind: str
    path: Path
    title: str
    document_id: str = ""
    submitted_at: float = 0.0

    @property
    def expected(self) -> tuple[str, str | None]:
        return KINDS[self.kind]


@dataclass
class Results:
    sagas: int = 0
    seed: int = 0  # `--seed` replays the same documents, kill targets and timings
    kills: int = 0
    busy_kills: int = 0  # kills of a service that had just written to its log (likely mid-work)
    crashes: int = 0  # services that died without being killed (restarted by the supervisor)
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    redelivered: int = 0  # the same event (same id) published more than once: allowed
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    outage: str = ""
    in_flight_at_outage: int = 0  # sagas submitted and not ended when the stores went away
    replicas: int = 1  # processes per service at the start
    killed_services: list[str] = field(default_factory=list)  # every service killed at least once, sorted
    added_took_partitions: int = 0  # `--scale`: replicas added mid-run that were assigned partitions
    retired: int = 0  # `--scale`: replicas stopped (SIGTERM) mid-run while running
    retired_cleanly: int = 0  # of those, the ones that exited 0 within the timeout
    broker_kills: int = 0  # `--broker-kills`: SIGKILLs of the Kafka node leading most of our partitions
    rolling_restarts: int = 0  # `--rolling-restart`: Kafka nodes stopped and started one after another

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.violations or self.duplicates)

    def summary(self) -> dict[str, Any]:
        return {
            "sagas": self.sagas, "seed": self.seed, "kills": self.kills, "busy_kills": self.busy_kills,
            "crashes": self.crashes,
            "completed": self.outcomes["DocumentCompleted"], "compensated": self.outcomes["DocumentCompensated"],
            "compensation_failed": self.outcomes["CompensationFailed"], "lost": len(self.lost),
            "unexpected": len(self.unexpected), "violations": len(self.violations),
            "duplicate_effects": len(self.duplicates), "redelivered_same_id": self.redelivered,
            "outage": self.outage, "in_flight_at_outage": self.in_flight_at_outage,
            "replicas": self.replicas, "killed_services": self.killed_services,
            "added_took_partitions": self.added_took_partitions, "retired": self.retired,
            "retired_cleanly": self.retired_cleanly, "broker_kills": self.broker_kills,
            "rolling_restarts": self.rolling_restarts,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()}, "ok": self.ok,
        }


# --- documents --------------------------------------------------------------------------------
def make_documents(folder: Path, n: int, rng: random.Random, only_good: bool = False) -> list[Doc]:
    from tests.documents import paragraph, pdf_file, text_file

    kinds = ["good"] * n if only_good else [(MIX + MORE * (n // len(MORE) + 1))[i] for i in range(n)]
    docs = []
    for i, kind in enumerate(kinds):
        # a stuck undo needs a failure after the graph step for the graph step to undo at all
        title = f"chaos {i} {kind}" + (" fail-relational" if kind == "stuck-undo" else "")
        shape = i % 3
        if shape == 0:
            path = text_file(folder, f"d{i}.txt", paragraph(rng.randrange(10**6), rng.randrange(300, 3000)))
        elif shape == 1:  # now and then a longer one: several embedding batches (checkpoints)
            pages = [paragraph(rng.randrange(10**6), 1500) for _ in range(rng.choice((2, 4, 6, 16)))]
            path = pdf_file(folder, f"d{i}.pdf", pages)
        else:  # a "scan": a page of text and a page image (no text layer): several upload chunks
            path = scan_pdf(folder, f"d{i}.pdf", paragraph(rng.randrange(10**6), 1200),
                            rng.randrange(300_000, 900_000), rng)
        docs.append(Doc(kind, path, title))
    return docs


def scan_pdf(folder: Path, name: str, text: str, image_bytes: int, rng: random.Random) -> Path:
    """A PDF with one text page and one page holding a noise image of about `image_bytes`."""
    from fpdf import FPDF
    from PIL import Image

    side = int((image_bytes / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    pdf.add_page()
    pdf.multi_cell(0, 5, text)
    pdf.add_page()
    pdf.image(image, x=10, y=10, w=150)
    path = folder / name
    pdf.output(str(path))
    return path


# --- the services, killed and restarted -------------------------------------------------------
class Fleet:
    """The six services of this run, `replicas` processes each (named `<service>-<replica>`),
    with their logs in the run folder."""

    def __init__(self, env: dict[str, str], folder: Path, static: bool = True, replicas: int = 1) -> None:
        from services.core.saga import SERVICES

        # Static group membership (UDS3_GROUP_INSTANCE): a restarted service takes its partitions
        # back at once; without it, each kill stalls that service's group for the session timeout
        # (10 s, UDS3_KAFKA_SESSION_TIMEOUT_MS) and the kills would mostly land on services that are waiting to rejoin.
        self.env = {**env, "UDS3_GROUP_INSTANCE": "0"} if static else env
        self.folder = folder
        self.services = list(SERVICES)
        self.names = [f"{s}-{r}" for s in SERVICES for r in range(replicas)]
        self.procs: dict[str, Any] = {}
        self.expected_dead: set[str] = set()
        self.kills = 0
        self.busy_kills = 0
        self.crashes = 0
        self.log_sizes: dict[str, tuple[int, float]] = {}  # service -> (log size, when it last grew)
        self.started_at: dict[str, int] = {}  # service -> its log's size when it was last started
        self.consuming: set[str] = set()  # services that logged "started" since their last start
        self.added: list[str] = []  # replicas added mid-run (`--scale`)
        self.unclean: list[str] = []  # replicas retired that did not exit cleanly, with their log tail

    def start(self, name: str) -> None:
        from services.processes import ServiceProcess

        service, replica = name.rsplit("-", 1)
        p = ServiceProcess(service, int(replica), env=self.env)
        p.log_path = self.folder / f"{name}.log"  # not .stack/services: other runs write there
        p.pid_path = self.folder / f"{name}.pid"  # and `uds3 services down` stops what is there
        self.started_at[name] = p.log_path.stat().st_size if p.log_path.exists() else 0
        self.consuming.discard(name)
        self.procs[name] = p.start()
        self.expected_dead.discard(name)

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, name: str) -> None:
        busy = name in self.busy()
        self.expected_dead.add(name)
        self.procs[name].kill()
        self.kills += 1
        self.busy_kills += busy

    def busy(self, within: float = 0.5) -> list[str]:
        """Consuming services that wrote to their log in the last `within` seconds (at work)."""
        now = time.monotonic()
        found = []
        for name in list(self.names):  # `add` and `retire` change it from other threads
            if not self.log(name).exists():
                continue
            size = self.log(name).stat().st_size
            if name not in self.consuming:
                with open(self.log(name), "rb") as f:
                    f.seek(self.started_at.get(name, 0))
                    if b" started group=" in f.read():
                        self.consuming.add(name)
            last_size, grew_at = self.log_sizes.get(name, (0, 0.0))
            if size != last_size:
                self.log_sizes[name] = (size, now)
                grew_at = now
            if now - grew_at <= within and name in self.consuming:
                found.append(name)
        return found

    def replicas_of(self, service: str) -> list[str]:
        return [n for n in self.names if n.rsplit("-", 1)[0] == service]

    def add(self, service: str) -> str:
        """One more replica of `service`: it joins the consumer group and takes partitions over."""
        name = f"{service}-{max(int(n.rsplit('-', 1)[1]) for n in self.procs if n.startswith(service + '-')) + 1}"
        self.start(name)
        self.names.append(name)  # after its log exists: `busy` reads it from another thread
        return name

    def retire(self, name: str) -> bool | None:
        """Stops a replica for good (SIGTERM): whether it exited cleanly within the timeout;
        None when it had no partitions to hand back: not running (the monkey had just killed
        it), or restarted and not yet in its group (a process still starting may die of it)."""
        self.names.remove(name)
        self.expected_dead.add(name)
        proc = self.procs[name]
        until = time.monotonic() + 20  # one just restarted by the monkey: let it join first
        while proc.alive and not (joined := self._joined(name)) and time.monotonic() < until:
            time.sleep(0.2)
        if not proc.alive or not joined:
            proc.stop(timeout=30)
            return None
        proc.stop(timeout=30)
        code = proc.proc.returncode if proc.proc is not None else None
        if code != 0:
            self.unclean.append(f"{name} exited {code} on SIGTERM: {proc.log_tail(12)}")
        return code == 0

    def _joined(self, name: str) -> bool:
        """It logged joining its group since it was last started."""
        with open(self.log(name), "rb") as f:
            f.seek(self.started_at.get(name, 0))
            return b" started group=" in f.read()

    def took_partitions(self, name: str) -> bool:
        """Its runtime logged a rebalance that gave it partitions (`assigned partitions=N`)."""
        counts = re.findall(r" assigned partitions=(\d+)", self.log(name).read_text(errors="replace"))
        return any(int(n) > 0 for n in counts)

    def restart_crashed(self) -> list[str]:
        crashed = [n for n, p in self.procs.items()
                   if not p.alive and n not in self.expected_dead and n in self.names]
        for name in crashed:
            self.crashes += 1
            self.start(name)
        return crashed

    def stop_all(self) -> None:
        from services.processes import stop_all

        stop_all(list(self.procs.values()))

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"


async def monkey(fleet: Fleet, kills: int, interval: tuple[float, float], rng: random.Random,
                 killed: set[str]) -> None:
    """SIGKILLs a random service process at random moments and restarts it (right away or a
    moment later). The first kills take every service once, in random order; then any.

    Half of the kills are aimed: at a process that is working right now (its log just grew),
    after a random few milliseconds, so kills land inside handlers, not only between them.
    """
    order = rng.sample(fleet.services, len(fleet.services))
    for i in range(kills):
        wait = rng.uniform(*interval)
        candidates = fleet.replicas_of(order[i]) if i < len(order) else list(fleet.names)
        name = rng.choice(candidates)
        if rng.random() < 0.5:
            until = time.monotonic() + wait
            while time.monotonic() < until:  # watch for a busy process until the kill is due
                await asyncio.sleep(0.05)
                busy = [n for n in fleet.busy(within=0.1) if n in candidates]
                if busy:
                    name = rng.choice(busy)
                    await asyncio.sleep(rng.uniform(0, 0.2))
                    break
        else:
            await asyncio.sleep(wait)
        if name not in fleet.names:  # retired meanwhile (`--scale`)
            continue
        await asyncio.to_thread(fleet.kill, name)
        killed.add(name.rsplit("-", 1)[0])
        await asyncio.sleep(rng.choice((0.0, 0.0, rng.uniform(0.1, 2.0))))
        if name in fleet.names:
            await asyncio.to_thread(fleet.start, name)


async def scale(fleet: Fleet, phase: float, results: Results) -> None:
    """A third of the way in, one replica more of every service; two thirds in, the first
    replica of every service stopped for good: partitions move to the newcomers and back."""
    await asyncio.sleep(phase / 3)
    fleet.added = [await asyncio.to_thread(fleet.add, s) for s in fleet.services]
    await asyncio.sleep(phase / 3)
    for service in fleet.services:
        clean = await asyncio.to_thread(fleet.retire, fleet.replicas_of(service)[0])
        results.retired += clean is not None
        results.retired_cleanly += bool(clean)
    results.notes.append(f"added {', '.join(fleet.added)}; retired the first replica of each service")
    results.notes += fleet.unclean


async def supervisor(fleet: Fleet, stop: asyncio.Event, results: Results) -> None:
    """Restarts a service that died by itself (what a process manager would do); counts it."""
    while not stop.is_set():
        for name in await asyncio.to_thread(fleet.restart_crashed):
            results.notes.append(f"{name} exited by itself; restarted (see {fleet.log(name)})")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


# --- Kafka nodes killed and restarted (the cluster profile) ------------------------------------
def leaders(settings: Any) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (leader node, in-sync replicas) for this deployment's topics."""
    from services.core import topics
    from services.operator.access import admin_client

    ours = {t.name for t in topics.ALL_TOPICS}
    found = admin_client(settings).list_topics(timeout=10).topics
    return {(name, p.id): (p.leader, len(p.isrs)) for name, t in found.items() if name in ours
            for p in t.partitions.values()}


def broker_pid(node: int) -> int:
    """The cluster node's pid, from `infra/stack.sh status`."""
    out = subprocess.run(["bash", "infra/stack.sh", "status"], cwd=REPO_ROOT, capture_output=True, text=True,
                         env={**os.environ, "UDS3_KAFKA_NODES": "3"}).stdout
    found = re.search(rf"^kafka-{node}\s+running.*pid=(\d+)", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"Kafka node {node} is not running:\n{out}")
    return int(found.group(1))


def start_brokers() -> None:
    """`infra/stack.sh up` starts the cluster's nodes that are not running and waits for them."""
    subprocess.run(["bash", "infra/stack.sh", "up"], cwd=REPO_ROOT, check=True, capture_output=True,
                   env={**os.environ, "UDS3_KAFKA_NODES": "3"})


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


async def fully_replicated(settings: Any, timeout: float = 120) -> None:
    """Every partition of ours has all three replicas in sync again (before the next node goes)."""
    deadline = time.monotonic() + timeout
    while any(isr < 3 for _, isr in (await asyncio.to_thread(leaders, settings)).values()):
        if time.monotonic() > deadline:
            raise TimeoutError("partitions still under-replicated")
        await asyncio.sleep(1)


async def broker_monkey(settings: Any, kills: int, phase: float, rng: random.Random, results: Results) -> None:
    """SIGKILLs the node that leads most of this deployment's partitions, one at a time, and
    starts it again a few seconds later (RF 3, min.insync.replicas 2: one node may be down)."""
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.3, 1.0) * phase / kills)
        counts = Counter(leader for leader, _ in (await asyncio.to_thread(leaders, settings)).values())
        node = counts.most_common(1)[0][0]
        os.kill(broker_pid(node), signal.SIGKILL)
        results.broker_kills += 1
        await asyncio.sleep(rng.uniform(1.0, 5.0))
        await asyncio.to_thread(start_brokers)
        await fully_replicated(settings)


async def rolling_restart(settings: Any, phase: float, results: Results) -> None:
    """Each node in turn: SIGTERM (a controlled shutdown hands its leaderships over), start,
    and wait for every partition to be fully replicated before the next."""
    await asyncio.sleep(phase / 4)
    for node in (1, 2, 3):
        pid = broker_pid(node)
        os.kill(pid, signal.SIGTERM)
        await asyncio.to_thread(wait_gone, pid)
        await asyncio.to_thread(start_brokers)
        await fully_replicated(settings)
        results.rolling_restarts += 1


# --- an outage of the stores ------------------------------------------------------------------
def store_pids() -> dict[str, list[int]]:
    """PostgreSQL (postmaster and every backend) and Neo4j, from `infra/stack.sh status`."""
    out = subprocess.run(["bash", "infra/stack.sh", "status"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    pids: dict[str, list[int]] = {}
    for line in out.splitlines():
        m = re.match(r"^(postgres|neo4j)\s+running.*pid=(\d+)", line)
        if m:
            main = int(m.group(2))
            children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
            pids[m.group(1)] = [main, *map(int, children)]
    return pids


def pg_ctl_of(postmaster: int) -> tuple[str, str]:
    """pg_ctl next to the running postmaster's binary, and its data directory (`-D`)."""
    argv = Path(f"/proc/{postmaster}/cmdline").read_bytes().decode().split("\0")
    return str(Path(argv[0]).with_name("pg_ctl")), argv[argv.index("-D") + 1]


async def outage(seconds: float, results: Results, mode: str = "freeze") -> None:
    """An outage of the stores for `seconds`.

    freeze: PostgreSQL (postmaster and backends) and Neo4j get SIGSTOP, then SIGCONT: every
    call hangs, then carries on. restart: PostgreSQL is stopped for real (`pg_ctl stop -m fast`:
    connections are cut, new ones refused) and started again by `infra/stack.sh up`; Neo4j is
    frozen meanwhile (a JVM restart would take longer than the outage).
    """
    pids = store_pids()
    frozen = [pid for name, group in pids.items() for pid in group if mode == "freeze" or name == "neo4j"]
    started = time.monotonic()
    stopped_pg = False
    try:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        if mode == "restart" and pids.get("postgres"):
            pg_ctl, data = await asyncio.to_thread(pg_ctl_of, pids["postgres"][0])
            await asyncio.to_thread(subprocess.run, ["runuser", "-u", "postgres", "--", pg_ctl, "stop", "-D", data,
                                                     "-m", "fast", "-w"], cwd="/", check=True, capture_output=True)
            stopped_pg = True
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if stopped_pg:
            await asyncio.to_thread(subprocess.run, ["bash", "infra/stack.sh", "up"], cwd=REPO_ROOT, check=True,
                                    capture_output=True)
    what = "postgres stopped and restarted, neo4j frozen" if stopped_pg else f"{', '.join(sorted(pids))} frozen"
    results.outage = f"{what} for {time.monotonic() - started:.1f}s"


# --- reading topics ---------------------------------------------------------------------------
async def terminal_events(settings: Any) -> dict[str, list[Any]]:
    from services.core import codec, topics

    found: dict[str, list[Any]] = defaultdict(list)
    for record in await topics.read_all(settings, topics.COMPLETIONS):
        with contextlib.suppress(codec.UndecodableEvent):
            event = codec.decode(record.value)
            found[event.document_id].append(event)
    return found


# --- the run ----------------------------------------------------------------------------------
async def run(args: argparse.Namespace, env: dict[str, str], folder: Path) -> Results:
    from services.client import Client
    from services.core.config import Settings
    from services.operator import access
    from services.operator.provision import create_database

    rng = random.Random(args.seed)
    results = Results(sagas=args.sagas, seed=args.seed)
    settings = Settings()
    create_database(settings)  # its own: a relay on a shared database would publish our events elsewhere
    await access.provision_kafka(settings)
    docs_dir = folder / "documents"
    docs_dir.mkdir()
    docs = make_documents(docs_dir, args.sagas, rng, only_good=args.outage)
    fleet = Fleet(env, folder / "logs", static=args.static_membership, replicas=args.replicas)
    results.replicas = args.replicas
    killed: set[str] = set()
    (folder / "logs").mkdir()
    began = time.monotonic()
    fleet.start_all()
    stop_supervisor = asyncio.Event()
    supervising = asyncio.create_task(supervisor(fleet, stop_supervisor, results))
    try:
        phase = args.kills * sum(args.interval) / 2  # how long the kills take, roughly
        spread = max(phase * 0.6, 1.0)
        plan = sorted(rng.uniform(0, spread) for _ in docs)
        async with Client(settings) as client:

            async def submit_all() -> None:
                t0 = time.monotonic()
                for doc, at in zip(docs, plan, strict=True):
                    await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
                    sub = await client.submit(doc.path, title=doc.title, author="C. Haos; A. Clerk",
                                              organisation="Records Office", case_number=f"K-{rng.randrange(5)}")
                    doc.document_id, doc.submitted_at = sub.document_id, time.monotonic()

            tasks = [asyncio.create_task(submit_all()), asyncio.create_task(
                monkey(fleet, args.kills, tuple(args.interval), rng, killed))]
            if args.scale:
                tasks.append(asyncio.create_task(scale(fleet, phase, results)))
            if args.broker_kills:
                tasks.append(asyncio.create_task(broker_monkey(settings, args.broker_kills, phase, rng, results)))
            if args.rolling_restart:
                tasks.append(asyncio.create_task(rolling_restart(settings, phase, results)))
            if args.outage:
                async def freeze_later() -> None:
                    await asyncio.sleep(max(phase / 2, 3.0))  # while the first documents are at work
                    ended = await terminal_events(settings)
                    results.in_flight_at_outage = sum(bool(d.document_id) and d.document_id not in ended
                                                      for d in docs)
                    await outage(args.outage_seconds, results, args.outage_mode)

                tasks.append(asyncio.create_task(freeze_later()))
            await asyncio.gather(*tasks)
        results.kills, results.busy_kills = fleet.kills, fleet.busy_kills
        results.killed_services = sorted(killed)
        results.seconds["kill_phase"] = time.monotonic() - began
        print(f"[chaos] {len(docs)} submitted, {fleet.kills} kills in {results.seconds['kill_phase']:.0f}s; "
              "waiting for every saga to end", flush=True)

        # every saga must end without help (no resume/replay): G1
        deadline = time.monotonic() + args.settle
        ids = {d.document_id for d in docs}
        while True:
            ended = await terminal_events(settings)
            waiting = ids - ended.keys()
            if not waiting or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        results.seconds["until_all_terminal"] = time.monotonic() - began
        results.added_took_partitions = sum(fleet.took_partitions(n) for n in fleet.added)
        await asyncio.sleep(3)  # let redeliveries after the last restarts settle, then judge
        await judge(docs, settings, results)
    finally:
        stop_supervisor.set()
        await supervising
        results.crashes = fleet.crashes
        fleet.stop_all()
    results.seconds["total"] = time.monotonic() - began
    return results


async def judge(docs: list[Doc], settings: Any, results: Results) -> None:
    import psycopg

    from services.core import codec, topics
    from services.core.chunkstore import chunks_of
    from services.core.errors import TransientError
    from services.core.events import DOCUMENT_SUBMITTED
    from services.operator.consistency import gather
    from services.security.audit import verify_audit

    ended = await terminal_events(settings)
    for doc in docs:
        events = ended.get(doc.document_id, [])
        if not events:
            results.lost.append(f"{doc.document_id} ({doc.kind}): no terminal event")
            continue
        first = events[0]
        results.outcomes[first.event_type] += 1
        want, step = doc.expected
        if first.event_type != want or (step and first.payload.get("failed_step") != step):
            results.unexpected.append(f"{doc.document_id} ({doc.kind}): {first.event_type} "
                                      f"{json.dumps(dict(first.payload), default=str)[:160]}")
        distinct = {e.event_id for e in events}
        if len(distinct) > 1:
            results.duplicates.append(f"{doc.document_id}: {len(distinct)} terminal events with different ids "
                                      f"({', '.join(sorted(e.event_type for e in events))})")
        results.redelivered += len(events) - len(distinct)

    # G3 on the events topic: one id per (document, event type) -- a handler that ran twice
    # emits the same deterministic ids; different ids would be a second effect
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    copies = 0
    for record in await topics.read_all(settings, *topics.SAGA_TOPICS):
        try:
            event = codec.decode(record.value)
        except codec.UndecodableEvent:
            continue
        if event.event_type != DOCUMENT_SUBMITTED:
            copies += (event.event_id in ids[(event.document_id, event.event_type)])
            ids[(event.document_id, event.event_type)].add(event.event_id)
    results.redelivered += copies
    for (doc_id, kind), found in sorted(ids.items()):
        if len(found) > 1:
            results.duplicates.append(f"{doc_id}: {kind} published with {len(found)} different event ids")

    # G2: the consistency audit over this run's documents (and whatever its own stores hold)
    from services.operator.consistency import check
    from services.vector.adapters import VectorIndex

    scope = {d.document_id for d in docs} | set(chunks_of(settings).documents())
    report = None
    for attempt in range(30):  # a store may be restarting
        try:
            index = VectorIndex.of(settings).open()
            try:
                scope |= set(index.documents())
            finally:
                index.close()
            report = check(gather(settings, scope))
            break
        except (TransientError, ConnectionError) as e:
            results.notes.append(f"audit attempt {attempt + 1}: {e}")
            await asyncio.sleep(2)
    if report is None:
        results.violations.append("the consistency audit could not read the stores")
        return
    results.violations += [str(v) for v in report.violations]
    results.notes += [str(n) for n in report.notes]
    with psycopg.connect(settings.pg_dsn()) as conn:
        results.violations += [f"audit trail: {p}" for p in verify_audit(conn)]


def configure(folder: Path, prefix: str, chunk_store: str = "folder") -> dict[str, str]:
    """This run's environment, for the services and for this process (before services.* is imported)."""
    from services.core.config import isolated_env  # imports no topics: safe before configure() ends

    env = {
        **isolated_env(prefix, folder),
        "UDS3_FAULTS": FAULT_SPEC,
        "UDS3_RETRY_BASE_S": "0.1",
        "UDS3_CHUNK_BYTES": str(128 * 1024),  # many upload chunks (checkpoints) per document
        "UDS3_EMBED_BATCH": "8",  # many embedding checkpoints per document
        "UDS3_VECTOR_ITEM_PAGES": "4",  # the longer PDFs fan out: work items under kills too
    }
    if chunk_store == "s3":  # the stack's s3proxy: inbox and chunks as on a multi-node deployment
        env["UDS3_CHUNK_STORE_URL"] = f"s3://uds3-chaos/{prefix}"
        env["UDS3_INBOX_URL"] = f"s3://uds3-chaos/{prefix}-inbox"
        env["UDS3_S3_ENDPOINT"] = f"http://127.0.0.1:{os.environ.get('UDS3_S3_PORT', '18333')}"
    os.environ.update(env)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=50)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--interval", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                        help="seconds between kills (uniform)")
    parser.add_argument("--settle", type=float, default=600, help="seconds after the kills for every saga to end")
    parser.add_argument("--outage", action="store_true", help="freeze PostgreSQL and Neo4j mid-run (good docs only)")
    parser.add_argument("--outage-seconds", type=float, default=8.0)
    parser.add_argument("--outage-mode", choices=("freeze", "restart"), default="freeze",
                        help="freeze: SIGSTOP/SIGCONT; restart: stop PostgreSQL for real, then `infra/stack.sh up`")
    # Off by default: with aiokafka 0.14, a service killed and restarted many times within
    # seconds under one static instance id once stayed alive without ever being assigned
    # its partitions again (a clean-clone CI rehearsal lost 5 of 10 sagas to it).
    parser.add_argument("--static-membership", action="store_true",
                        help="static group membership: a restarted service takes its partitions back at once")
    parser.add_argument("--replicas", type=int, default=1, help="processes per service, one consumer group")
    parser.add_argument("--scale", action="store_true",
                        help="mid-run, add a replica of every service, later stop the first one of each")
    parser.add_argument("--broker-kills", type=int, default=0,
                        help="SIGKILL the Kafka node leading most partitions this often (UDS3_KAFKA_NODES=3)")
    parser.add_argument("--rolling-restart", action="store_true",
                        help="restart the three Kafka nodes one after another mid-run (UDS3_KAFKA_NODES=3)")
    parser.add_argument("--chunk-store", choices=("folder", "s3"), default="folder",
                        help="the inbox and chunk store: folders of the run, or the stack's s3proxy")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, chunks) even on success")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.randrange(10**6)

    status = subprocess.run(["bash", "infra/stack.sh", "status"], cwd=REPO_ROOT, capture_output=True, text=True)
    if status.stdout.count("running") < 5:
        print("the native stack is not running: `make up` first\n" + status.stdout, file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="uds3-chaos-"))
    prefix = f"chaos{uuid.uuid4().hex[:8]}"
    env = configure(folder, prefix, args.chunk_store)
    print(f"[chaos] seed {args.seed}, topic prefix {prefix}, folder {folder}", flush=True)
    results = asyncio.run(run(args, env, folder))

    s = results.summary()
    print(f"sagas {s['sagas']}  kills {s['kills']} ({s['busy_kills']} of a service at work)  "
          f"crashes {s['crashes']}")
    print(f"completed {s['completed']}  compensated {s['compensated']}  "
          f"compensation-failed {s['compensation_failed']}")
    print(f"violations {s['violations']}  lost {s['lost']}  unexpected {s['unexpected']}  "
          f"duplicate effects {s['duplicate_effects']}  (same-id redeliveries {s['redelivered_same_id']})")
    if results.outage:
        print(f"outage: {results.outage}, {results.in_flight_at_outage} sagas in flight when it began")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in s["seconds"].items()))
    for title, items in (("LOST", results.lost), ("UNEXPECTED", results.unexpected),
                         ("VIOLATION", results.violations), ("DUPLICATE", results.duplicates),
                         ("note", results.notes)):
        for item in items[:40]:
            print(f"  {title}: {item}")
    print("CHAOS-RESULT " + json.dumps(s), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(s, indent=2))
    if results.ok and not results.crashes and not args.keep:
        from services.core import topics
        from services.core.config import Settings
        from services.operator.provision import drop_database, drop_shared_stores

        shutil.rmtree(folder, ignore_errors=True)
        if Settings().chunk_store_url:
            from services.core.chunkstore import chunks_of
            from services.core.inbox import S3Inbox

            store = chunks_of(Settings())
            for doc in store.documents():
                store.delete(doc)
            S3Inbox.of(Settings()).empty()
        drop_database(Settings())
        drop_shared_stores(Settings())
        asyncio.run(topics.delete_topics(Settings()))
    else:
        print(f"[chaos] run folder kept: {folder} (service logs in {folder / 'logs'}), "
              f"database uds3_{prefix}")
    return 0 if results.ok else 1


if __name__ == "__main__":
    sys.exit(main())
