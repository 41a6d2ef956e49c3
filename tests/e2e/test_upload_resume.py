"""G4 for the upload: an uploader process killed (SIGKILL) or stopped (SIGTERM) mid-upload resumes.

A few hundred MB are uploaded by a real uploader process (its own topics and consumer group, so the
session's services never see these documents) with `UDS3_UPLOAD_PARALLELISM=1`. Each chunk file is
written atomically (a new inode per write), so comparing every chunk's (inode, mtime_ns) before and
after the restart shows exactly which chunks were written again. The file is PDF magic plus random
bytes: the uploader and its hashes are what is tested, so no other step runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.core import codec, topics
from services.core.chunkstore import ChunkStore
from services.core.config import Settings
from services.core.events import CHUNK_STORED, DOCUMENT_SUBMITTED, UPLOAD_COMPLETED, UPLOAD_STARTED, Event
from services.core.steplog import StepLog
from services.core.store import StepStore
from services.operator import access
from services.operator.provision import create_database, drop_database
from services.processes import ServiceProcess

pytestmark = pytest.mark.stack

MB = 1024 * 1024
SIZE = 300 * MB + 12_345  # 61 chunks of 5 MB, the last one short
CHUNK = 5 * MB
CHUNKS = -(-SIZE // CHUNK)
PREFIX = f"{os.environ['UDS3_TOPIC_PREFIX']}-upload"  # this module's own topics and consumer groups


class Uploader:
    """This module's uploader process, restartable, with its own environment and log file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = ServiceProcess("uploader", replica=71, env=env).start()

    def restart(self) -> None:
        self.proc = ServiceProcess("uploader", replica=71, env=self.env).start()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("upload-resume")
    yield path
    for big in path.rglob("*"):  # a few hundred MB each: do not leave them in /tmp
        if big.is_file():
            big.unlink()


@pytest.fixture(scope="module")
def source(folder: Path) -> tuple[Path, str]:
    """The big file and its sha256, written in 1 MB blocks of random bytes."""
    path = folder / "root" / "big.pdf"
    path.parent.mkdir()
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        block = b"%PDF-1.7\n"
        while block:
            f.write(block)
            digest.update(block)
            remaining = SIZE - f.tell()
            block = os.urandom(min(MB, remaining)) if remaining > 0 else b""
    assert path.stat().st_size == SIZE
    return path, digest.hexdigest()


@pytest.fixture(scope="module")
def database(stack: Settings) -> Iterator[Settings]:
    """A database of its own for this module's uploader event store.

    Every service relays *all* unpublished events of its schema (the outbox), whoever recorded
    them; an uploader with other topics on the shared database would publish other runs' events.
    """
    settings = replace(stack, pg_database=f"uds3_{PREFIX.replace('-', '_')}")
    create_database(settings, PREFIX)
    try:
        yield settings
    finally:
        drop_database(settings)


@pytest.fixture(scope="module")
def uploader(database: Settings, folder: Path) -> Iterator[Uploader]:
    env = {
        "UDS3_PG_DATABASE": database.pg_database,
        "UDS3_TOPIC_PREFIX": PREFIX,
        "UDS3_CHUNK_STORE": str(folder / "chunks"),
        "UDS3_ALLOWED_ROOT": str(folder / "root"),
        "UDS3_CHUNK_BYTES": str(CHUNK),
        "UDS3_UPLOAD_PARALLELISM": "1",
        "UDS3_FAULTS": "",
        # Static group membership: the restarted replica takes its partitions back at once, instead of
        # after the session timeout of the killed one (30 s).
        "UDS3_GROUP_INSTANCE": "71",
    }
    asyncio.run(access.provision_kafka(database, PREFIX))
    running = Uploader(env)
    yield running
    running.proc.stop()


@pytest.fixture(scope="module")
def events(database: Settings) -> StepStore:
    """The uploader's event store (read with the admin role, as an operator would)."""
    return StepStore("uploader", database, admin=True)


@pytest.fixture(scope="module")
def chunks(folder: Path) -> ChunkStore:
    return ChunkStore(folder / "chunks")


def submit(settings: Settings, source: Path) -> Event:
    event = Event(
        DOCUMENT_SUBMITTED,
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        producer="test",
        payload={
            "source_uri": source.as_uri(),
            "size_bytes": SIZE,
            "content_type": "application/pdf",
            "title": "resume",
            "submitter": "tester",
            "references": [],
            "metadata": {},
            "security_level": "internal",
        },
    )

    async def send() -> None:
        producer = AIOKafkaProducer(**settings.kafka("client"), enable_idempotence=True, acks="all")
        await producer.start()
        try:
            submissions = topics.build_topics(PREFIX)[0]
            await producer.send_and_wait(submissions.name, codec.encode(event), key=event.document_id.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    return event


def wait_for(what: str, check: Callable[[], Any], proc: ServiceProcess, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{proc.log_tail()}"
        time.sleep(0.02)
    return found


def stored_indexes(log: StepLog) -> list[int]:
    return sorted(e.payload["index"] for e in log.emitted_of(CHUNK_STORED))


def chunk_stats(store: ChunkStore, doc: str) -> dict[int, tuple[int, int]]:
    """(inode, mtime_ns) of every chunk file: a chunk written again is a new file (atomic rename)."""
    found = {}
    for p in store.folder(doc).glob("*.chunk"):
        st = p.stat()
        found[int(p.name.split(".")[0])] = (st.st_ino, st.st_mtime_ns)
    return found


def recorded_chunks_match_the_files(log: StepLog, store: ChunkStore, doc: str) -> None:
    for e in log.emitted_of(CHUNK_STORED):
        data = store.get(doc, e.payload["index"])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (e.payload["length"], e.payload["sha256"])


def assert_completed(log: StepLog, store: ChunkStore, doc: str, sha256: str) -> None:
    assert stored_indexes(log) == list(range(CHUNKS))  # exactly one ChunkStored per index, none lost
    assert [m["event_type"] for m in log.emitted].count(UPLOAD_STARTED) == 1
    done = log.last_emitted(UPLOAD_COMPLETED)
    assert done is not None
    assert (done.payload["sha256"], done.payload["size_bytes"], done.payload["chunk_count"]) == (sha256, SIZE, CHUNKS)
    whole = hashlib.sha256()
    for index in range(CHUNKS):  # the stored document, chunk by chunk, is the file
        whole.update(store.get(doc, index))
    assert whole.hexdigest() == sha256
    assert not list(store.folder(doc).glob(".*.tmp"))


def test_an_uploader_killed_mid_upload_resumes_and_redoes_at_most_one_chunk(
    stack: Settings, uploader: Uploader, events: StepStore, chunks: ChunkStore, source: tuple[Path, str]
) -> None:
    path, sha256 = source
    doc = submit(stack, path).document_id
    wait_for("six chunks recorded", lambda: len(stored_indexes(events.step_log(doc))) >= 6, uploader.proc)
    time.sleep(random.uniform(0, 0.05))  # land anywhere in the next chunk's read, hash, write or checkpoint
    uploader.proc.kill()  # SIGKILL, mid-upload
    at_kill = events.step_log(doc)
    recorded = stored_indexes(at_kill)
    on_disk = chunk_stats(chunks, doc)
    assert not at_kill.has_emitted(UPLOAD_COMPLETED) and len(recorded) < CHUNKS, "the kill came too late"
    assert recorded == list(range(len(recorded)))
    unrecorded = set(on_disk) - set(recorded)
    half_written = sorted(p.name for p in chunks.folder(doc).glob(".*.tmp"))  # a write the kill interrupted
    assert len(unrecorded) + len(half_written) <= 1, (sorted(on_disk), recorded, half_written)  # one in flight
    recorded_chunks_match_the_files(at_kill, chunks, doc)

    log = restart_and_complete(uploader, events, doc)
    after = chunk_stats(chunks, doc)
    redone = sorted(i for i, st in on_disk.items() if after[i] != st)
    print(
        f"\nSIGKILL after {len(recorded)} recorded chunks ({len(on_disk)} on disk, half-written: {half_written}):"
        f" chunks written again {redone}"
    )
    assert redone == sorted(unrecorded)  # only the chunk whose checkpoint was lost
    assert len(redone) <= 1
    assert_completed(log, chunks, doc, sha256)
    chunks.delete(doc)


def restart_and_complete(uploader: Uploader, events: StepStore, doc: str) -> StepLog:
    uploader.restart()
    log: StepLog = wait_for(
        "the upload to complete after the restart",
        lambda: (lg := events.step_log(doc)).has_emitted(UPLOAD_COMPLETED) and lg,
        uploader.proc,
    )
    return log


def test_an_uploader_stopped_mid_upload_stops_between_chunks_and_resumes_without_redoing_one(
    stack: Settings, uploader: Uploader, events: StepStore, chunks: ChunkStore, source: tuple[Path, str]
) -> None:
    path, sha256 = source
    doc = submit(stack, path).document_id
    wait_for("six chunks recorded", lambda: len(stored_indexes(events.step_log(doc))) >= 6, uploader.proc)
    started = time.monotonic()
    uploader.proc.stop(timeout=60)  # SIGTERM: cancellation
    stopped_in = time.monotonic() - started
    assert uploader.proc.proc is not None and uploader.proc.proc.returncode == 0, uploader.proc.log_tail()
    at_stop = events.step_log(doc)
    recorded = stored_indexes(at_stop)
    on_disk = chunk_stats(chunks, doc)
    print(f"\nSIGTERM after {len(recorded)} recorded chunks: stopped in {stopped_in:.2f}s")
    assert not at_stop.has_emitted(UPLOAD_COMPLETED), "the upload ran to its end instead of stopping"
    assert sorted(on_disk) == recorded == list(range(len(recorded)))  # consistent: no chunk left unrecorded
    assert not list(chunks.folder(doc).glob(".*.tmp"))
    recorded_chunks_match_the_files(at_stop, chunks, doc)

    log = restart_and_complete(uploader, events, doc)
    after = chunk_stats(chunks, doc)
    assert [i for i, st in on_disk.items() if after[i] != st] == []  # nothing redone
    assert_completed(log, chunks, doc, sha256)
    chunks.delete(doc)
