"""Steps 1-3 (uploader) on a real chunk store, driven by the shared runtime on an in-memory event store.

Every refusal must end the saga at once with a reason a person can act on, and leave nothing
in the chunk store; an upload stopped or crashed part-way resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from eventsourcing.persistence import Tracking

from services.core.chunkstore import ChunkStore
from services.core.config import Settings
from services.core.events import (
    CHUNK_STORED,
    DOCUMENT_COMPENSATED,
    DOCUMENT_SUBMITTED,
    UPLOAD_COMPLETED,
    UPLOAD_STARTED,
    Event,
)
from services.core.runtime import Outcome, Runtime
from services.core.step import Interrupted, Step
from services.core.steplog import StepLog
from services.core.store import StepStore
from services.uploader.step import UploaderStep
from services.uploader.validation import Refused, validate

PDF_HEAD = b"%PDF-1.7\n"


# --- a harness shared by the integration tests of the uploader, verifier and vector steps -----
@dataclass
class Harness:
    """One step behind the real runtime (`Runtime.process`), with an in-memory event store and no Kafka."""

    runtime: Runtime
    offset: int = 0
    other: int = 0  # the offset on another producer's topic
    checkpoints: list[Callable[[StepLog], None]] = field(default_factory=list)

    @property
    def step(self) -> Step:
        return self.runtime.step

    def feed(self, event: Event, offset: int | None = None) -> Outcome:
        """Delivers `event` at the next Kafka offset (or at `offset`, to model a redelivery)."""
        if offset is None:
            offset = self.offset + 1
        self.offset = max(self.offset, offset)
        return self.runtime.process(event, Tracking("kafka:test:0", offset))

    def feed_from_another_topic(self, event: Event) -> Outcome:
        """Delivers `event` as if from another producer's topic (positions of its own), e.g. the
        submission a later step needs before its trigger."""
        self.other += 1
        return self.runtime.process(event, Tracking("kafka:other:0", self.other))

    def log(self, document_id: str) -> StepLog:
        return self.runtime.store.step_log(document_id)

    def emitted(self, document_id: str) -> list[str]:
        return [m["event_type"] for m in self.log(document_id).emitted]

    def last(self, document_id: str, event_type: str) -> Event:
        found = self.log(document_id).last_emitted(event_type)
        assert found is not None, (event_type, self.emitted(document_id))
        return found

    def on_checkpoint(self, hook: Callable[[StepLog], None]) -> None:
        """Runs `hook` before each checkpoint is recorded (a hook that raises models a crash there)."""
        self.checkpoints.append(hook)


def harness(step: Step, settings: Settings, *, started: bool = False, store: StepStore | None = None) -> Harness:
    """`store`: another harness's event store, as a restarted service finds it."""
    if not started:
        step.start()
    store = store or StepStore(step.service, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    hooks: list[Callable[[StepLog], None]] = []

    def checkpoint(log: StepLog) -> None:
        for hook in hooks:
            hook(log)
        store.record(log)  # what Runtime._checkpoint does, minus the Kafka relay

    return Harness(Runtime(step, settings, store=store, checkpoint=checkpoint), checkpoints=hooks)


def make_settings(tmp: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "chunk_store_dir": tmp / "chunks",
        "allowed_root": tmp / "root",
        "chunk_bytes": 64 * 1024,
        "upload_parallelism": 2,
        "max_file_bytes": 8 * 1024 * 1024,
        "step_deadline_s": 2,
        "retry_base_s": 0.001,
        **changes,
    }
    (tmp / "root").mkdir(exist_ok=True)
    return Settings(**values)  # type: ignore[arg-type]


def submission(source: str | Path, *, doc: str | None = None, **payload: object) -> Event:
    return Event(
        DOCUMENT_SUBMITTED,
        doc or str(uuid.uuid4()),
        str(uuid.uuid4()),
        producer="client",
        payload={"source_uri": str(source), "size_bytes": 0, "content_type": "", "title": "integration",
                 "submitter": "tester", **payload},
    )


def binary_pdf(path: Path, size: int, seed: int = 1) -> Path:
    """A file with PDF magic and pseudo-random bytes: enough for the uploader and the verifier."""
    data = PDF_HEAD + hashlib.shake_256(f"{seed}".encode()).digest(size - len(PDF_HEAD))
    path.write_bytes(data)
    return path


def chunk_stats(store: ChunkStore, doc: str) -> dict[int, tuple[int, int]]:
    """(inode, mtime_ns) of each stored chunk: a chunk written again gets a new inode (atomic rename)."""
    return {
        int(p.name.split(".")[0]): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in store.folder(doc).glob("*.chunk")
    }


def chunk_stored_indexes(h: Harness, doc: str) -> list[int]:
    return sorted(e.payload["index"] for e in h.log(doc).emitted_of(CHUNK_STORED))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def uploader(settings: Settings) -> Harness:
    return harness(UploaderStep.from_settings(settings), settings)


@pytest.fixture
def store(settings: Settings) -> ChunkStore:
    return ChunkStore(settings.chunk_store_dir)


# --- the forward path ---------------------------------------------------------------------------
def test_a_file_is_stored_in_chunks_with_one_checkpoint_per_chunk(
    uploader: Harness, settings: Settings, store: ChunkStore
) -> None:
    source = binary_pdf(settings.allowed_root / "big.pdf", 16 * 64 * 1024 + 123)
    sub = submission(source.as_uri())
    assert uploader.feed(sub).action == "handled"
    doc = sub.document_id
    kinds = uploader.emitted(doc)
    assert kinds[0] == UPLOAD_STARTED and kinds[-1] == UPLOAD_COMPLETED
    assert uploader.last(doc, UPLOAD_STARTED).payload["total_chunks"] == 17
    assert chunk_stored_indexes(uploader, doc) == list(range(17))
    done = uploader.last(doc, UPLOAD_COMPLETED).payload
    data = source.read_bytes()
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert (done["size_bytes"], done["chunk_count"]) == (len(data), 17)
    assert b"".join(store.get(doc, i) for i in range(17)) == data
    with store.open(doc) as reader:  # the claim check downstream steps use
        assert hashlib.sha256(reader.read()).hexdigest() == done["sha256"]
    assert done["manifest_uri"] == (store.folder(doc) / "manifest.json").resolve().as_uri()


def test_a_small_text_file_takes_the_same_path_as_one_chunk(uploader: Harness, settings: Settings) -> None:
    source = settings.allowed_root / "note.txt"
    source.write_text("A short note from the records office. Ünïcödé is fine.\n", encoding="utf-8")
    sub = submission(source)
    uploader.feed(sub)
    assert uploader.emitted(sub.document_id)[0] == UPLOAD_STARTED
    assert chunk_stored_indexes(uploader, sub.document_id) == [0]
    assert uploader.last(sub.document_id, UPLOAD_COMPLETED).payload["chunk_count"] == 1


# --- refusals -------------------------------------------------------------------------------------
def _outside(tmp: Path) -> Path:
    folder = tmp / "outside"
    folder.mkdir(exist_ok=True)
    target = folder / "secret.pdf"
    target.write_bytes(PDF_HEAD + b"outside the root\n")
    return target


REFUSALS: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    # case: (make the source under `root` / `tmp`, return what is submitted), the reason's key words
    "missing file": (lambda root, tmp: str(root / "nope.pdf"), "no such file"),
    "a directory": (lambda root, tmp: str(_mkdir(root / "folder")), "is a directory"),
    "outside the root": (lambda root, tmp: str(_outside(tmp)), "outside the allowed root"),
    "dot-dot escape": (lambda root, tmp: _dotdot(root, tmp, "{root}/sub/../../outside/secret.pdf"), "outside the"),
    "dot-dot escape as a file URI": (
        lambda root, tmp: _dotdot(root, tmp, "file://{root}/../outside/secret.pdf"),
        "outside the allowed root",
    ),
    "symlink escape": (lambda root, tmp: str(_link(root / "link.pdf", _outside(tmp))), "outside the allowed root"),
    "dangling symlink": (lambda root, tmp: str(_link(root / "dangling.pdf", root / "gone.pdf")), "no such file"),
    "zero-byte file": (lambda root, tmp: str(_write(root / "empty.pdf", b"")), "the file is empty"),
    "over the size limit": (
        lambda root, tmp: str(_write(root / "huge.pdf", PDF_HEAD + b"x" * 5000)),
        "over the limit of 4096 (UDS3_MAX_FILE_BYTES)",
    ),
    "a PNG named .pdf": (
        lambda root, tmp: str(_write(root / "scan.pdf", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))),
        "named .pdf but not a PDF",
    ),
    "HTML named .pdf": (
        lambda root, tmp: str(_write(root / "page.PDF", b"<!doctype html><html><body>login</body></html>\n")),
        "named .pdf but not a PDF",
    ),
    "a PNG named .txt": (
        lambda root, tmp: str(_write(root / "scan.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))),
        "not a PDF or UTF-8 text file",
    ),
    "an executable": (
        lambda root, tmp: str(_write(root / "tool.txt", Path(sys.executable).resolve().read_bytes()[:4096])),
        "not a PDF or UTF-8 text file",
    ),
    "a relative path": (lambda root, tmp: "documents/case.pdf", "give an absolute path"),
    "a web address": (lambda root, tmp: "https://example.org/case.pdf", "only local files"),
}


def _dotdot(root: Path, tmp: Path, template: str) -> str:
    _outside(tmp)
    (root / "sub").mkdir()
    return template.format(root=root)


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _link(p: Path, target: Path) -> Path:
    p.symlink_to(target)
    return p


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_file_fails_the_upload_with_an_actionable_reason_and_stores_nothing(
    case: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, max_file_bytes=4096)
    uploader = harness(UploaderStep.from_settings(settings), settings)
    make, expected = REFUSALS[case]
    sub = submission(make(settings.allowed_root, tmp_path))
    uploader.feed(sub)
    doc = sub.document_id
    assert uploader.emitted(doc) == ["UploadFailed", DOCUMENT_COMPENSATED]  # the first step ends the saga itself
    failed = uploader.last(doc, "UploadFailed").payload
    assert expected in failed["reason"], failed["reason"]
    assert failed["retryable"] is False and failed["step"] == "Upload"
    assert uploader.last(doc, DOCUMENT_COMPENSATED).payload["reason"] == failed["reason"]
    store = ChunkStore(settings.chunk_store_dir)
    assert not store.folder(doc).exists() and store.chunk_count(doc) == 0


def test_an_unreadable_file_is_refused_with_a_reason(tmp_path: Path) -> None:
    """chmod 000. Root reads such a file anyway (CAP_DAC_OVERRIDE), so as root the refusal is checked in
    a forked child that dropped to `nobody`, on a file in a folder it may enter (pytest's tmp dirs are
    0700), by `validate`: the uploader's own check, the first thing its step does."""
    if os.geteuid() != 0:
        settings = make_settings(tmp_path)
        uploader = harness(UploaderStep.from_settings(settings), settings)
        source = _write(settings.allowed_root / "locked.pdf", PDF_HEAD + b"locked\n")
        source.chmod(0)
        sub = submission(source)
        uploader.feed(sub)
        assert "not readable by the uploader" in uploader.last(sub.document_id, "UploadFailed").payload["reason"]
        assert not ChunkStore(settings.chunk_store_dir).folder(sub.document_id).exists()
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no `nobody` user to check an unreadable file with")
    folder = Path(tempfile.mkdtemp(prefix="uds3-unreadable-"))
    try:
        folder.chmod(0o755)
        source = _write(folder / "locked.pdf", PDF_HEAD + b"locked\n")
        source.chmod(0)
        assert validate(str(source), folder, 1 << 20).size > 0  # root: readable after all, so it would upload
        assert _validate_as(nobody, str(source), folder) == (
            f"{source}: not readable by the uploader (check its permissions)"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _validate_as(user: pwd.struct_passwd, source: str, root: Path) -> str:
    """The refusal `validate` gives in a child process running as `user`."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, check, report, exit without running any cleanup
        code = 0
        try:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                validate(source, root, 1 << 20)
                message = "ACCEPTED"
            except Refused as e:
                message = str(e)
            os.write(write, message.encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


def test_a_file_that_changes_size_between_crash_and_resume_is_refused(
    uploader: Harness, settings: Settings, store: ChunkStore
) -> None:
    source = binary_pdf(settings.allowed_root / "growing.pdf", 10 * 64 * 1024)
    sub = submission(source)
    crash_after(uploader, stored=3, graceful=True)
    with pytest.raises(Interrupted):
        uploader.feed(sub, offset=1)
    uploader.checkpoints.clear()
    uploader.runtime.ctx.stopping.clear()
    with open(source, "ab") as f:
        f.write(b"more pages\n")
    uploader.feed(sub, offset=1)
    reason = uploader.last(sub.document_id, "UploadFailed").payload["reason"]
    assert "changed while it was being uploaded" in reason
    assert not store.folder(sub.document_id).exists()  # the failed step cleaned up its partial chunks


# --- idempotency -----------------------------------------------------------------------------------
def test_a_redelivered_submission_changes_nothing(uploader: Harness, settings: Settings, store: ChunkStore) -> None:
    source = binary_pdf(settings.allowed_root / "a.pdf", 3 * 64 * 1024)
    sub = submission(source)
    uploader.feed(sub, offset=1)
    before, stats = uploader.emitted(sub.document_id), chunk_stats(store, sub.document_id)
    assert uploader.feed(sub, offset=1).action == "redelivered"  # same Kafka position: tracking says done
    assert uploader.feed(sub, offset=9).action == "duplicate"  # published twice: the inbox says done
    assert uploader.emitted(sub.document_id) == before
    assert chunk_stats(store, sub.document_id) == stats


def test_the_same_document_submitted_twice_is_uploaded_once(
    uploader: Harness, settings: Settings, store: ChunkStore
) -> None:
    source = binary_pdf(settings.allowed_root / "twice.pdf", 3 * 64 * 1024)
    first = submission(source)
    again = submission(source, doc=first.document_id)  # a new saga and event id, the same document id
    uploader.feed(first)
    before, stats = uploader.emitted(first.document_id), chunk_stats(store, first.document_id)
    assert uploader.feed(again).action == "handled"
    log = uploader.log(first.document_id)
    assert [m["saga_id"] for m in log.received] == [first.saga_id, again.saga_id]  # both seen, one ingested
    assert uploader.emitted(first.document_id) == before
    assert chunk_stats(store, first.document_id) == stats


def test_undo_deletes_every_chunk_once(uploader: Harness, settings: Settings, store: ChunkStore) -> None:
    source = binary_pdf(settings.allowed_root / "undo.pdf", 4 * 64 * 1024)
    sub = submission(source)
    uploader.feed(sub)
    assert store.chunk_count(sub.document_id) == 4
    failure = sub.follow(
        "IntegrityFailed", "verifier", step="Integrity", reason="chunk 2 is corrupted", retryable=False,
        error_type="IntegrityMismatch",
    )
    uploader.feed(failure)
    uploader.feed(failure)  # delivered twice
    compensated = [e.payload for e in uploader.log(sub.document_id).emitted_of("UploadCompensated")]
    assert len(compensated) == 1 and compensated[0]["removed"] == 4
    assert uploader.last(sub.document_id, DOCUMENT_COMPENSATED).payload["failed_step"] == "Integrity"
    assert not store.folder(sub.document_id).exists()


# --- resume (G4) -------------------------------------------------------------------------------------
class Crash(BaseException):
    """Models SIGKILL: nothing after this point runs or gets recorded (not an Exception: no retry, no cleanup)."""


def crash_after(h: Harness, stored: int, graceful: bool = False) -> None:
    """Stops the upload at the checkpoint of its `stored`-th chunk, before that checkpoint is recorded.

    graceful: instead, let that checkpoint be recorded and ask the step to stop (SIGTERM).
    """

    def hook(log: StepLog) -> None:
        if sum(1 for _ in log.emitted_of(CHUNK_STORED)) >= stored:
            if not graceful:
                raise Crash
            h.runtime.ctx.stopping.set()

    h.on_checkpoint(hook)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_crash_mid_upload_redoes_at_most_the_chunks_in_flight(tmp_path: Path, parallelism: int) -> None:
    settings = make_settings(tmp_path, upload_parallelism=parallelism)
    uploader, store = harness(UploaderStep.from_settings(settings), settings), ChunkStore(settings.chunk_store_dir)
    source = binary_pdf(settings.allowed_root / "crash.pdf", 20 * 64 * 1024 + 7)
    sub = submission(source)
    crash_after(uploader, stored=6)
    with pytest.raises(Crash):
        uploader.feed(sub, offset=1)
    doc = sub.document_id
    recorded = chunk_stored_indexes(uploader, doc)
    # The checkpoint that would have taken the count to 6 never made it (it records every
    # finished chunk at once, so up to `parallelism` of them).
    assert recorded == list(range(len(recorded))) and 6 - parallelism <= len(recorded) < 6
    at_crash = chunk_stats(store, doc)
    uploader.checkpoints.clear()
    assert uploader.feed(sub, offset=1).action == "handled"  # Kafka redelivers the unfinished input
    redone = {i for i, st in at_crash.items() if chunk_stats(store, doc)[i] != st}
    assert redone == set(at_crash) - set(recorded) and len(redone) <= parallelism, (redone, recorded)
    assert chunk_stored_indexes(uploader, doc) == list(range(21))  # exactly one ChunkStored per index
    assert uploader.emitted(doc).count(UPLOAD_STARTED) == 1
    done = uploader.last(doc, UPLOAD_COMPLETED).payload
    assert done["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest() and done["chunk_count"] == 21


def test_a_stopped_upload_resumes_without_redoing_a_chunk(
    uploader: Harness, settings: Settings, store: ChunkStore
) -> None:
    source = binary_pdf(settings.allowed_root / "stop.pdf", 12 * 64 * 1024)
    sub = submission(source)
    crash_after(uploader, stored=4, graceful=True)
    with pytest.raises(Interrupted):
        uploader.feed(sub, offset=1)
    doc = sub.document_id
    at_stop = chunk_stats(store, doc)
    recorded = chunk_stored_indexes(uploader, doc)
    assert sorted(at_stop) == recorded  # consistent: every chunk on disk is recorded, nothing half-done
    assert not list(store.folder(doc).glob(".*.tmp"))
    uploader.checkpoints.clear()
    uploader.runtime.ctx.stopping.clear()
    uploader.feed(sub, offset=1)
    after = chunk_stats(store, doc)
    assert all(after[i] == st for i, st in at_stop.items())  # nothing redone
    assert chunk_stored_indexes(uploader, doc) == list(range(12))
    assert uploader.last(doc, UPLOAD_COMPLETED).payload["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_a_resumed_upload_keeps_the_chunk_size_it_started_with(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    uploader = harness(UploaderStep.from_settings(settings), settings)
    source = binary_pdf(settings.allowed_root / "resize.pdf", 8 * 64 * 1024)
    sub = submission(source)
    crash_after(uploader, stored=3)
    with pytest.raises(Crash):
        uploader.feed(sub, offset=1)
    # The service restarts with another UDS3_CHUNK_BYTES; the event store keeps the upload's own.
    again = make_settings(tmp_path, chunk_bytes=100_000)
    restarted = harness(UploaderStep.from_settings(again), again, store=uploader.runtime.store)
    restarted.feed(sub, offset=1)
    done = restarted.last(sub.document_id, UPLOAD_COMPLETED).payload
    assert done["chunk_count"] == 8
    assert done["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
