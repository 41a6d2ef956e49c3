"""Step 4 (verifier) on a real chunk store: every hash is checked again, chunk by chunk, read only.

A mismatch fails the step with a reason that names what is wrong; the uploader's compensation
then deletes the chunks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.core.chunkstore import ChunkStore
from services.core.config import Settings
from services.core.events import (
    DOCUMENT_COMPENSATED,
    INTEGRITY_VERIFIED,
    UPLOAD_COMPLETED,
    Event,
)
from services.uploader.step import UploaderStep
from services.verifier.step import VerifierStep
from tests.integration.test_uploader import Harness, binary_pdf, harness, make_settings, submission

CHUNK = 64 * 1024


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, chunk_bytes=CHUNK)


@pytest.fixture
def uploader(settings: Settings) -> Harness:
    return harness(UploaderStep.from_settings(settings), settings)


@pytest.fixture
def verifier(settings: Settings) -> Harness:
    return harness(VerifierStep.from_settings(settings), settings)


@pytest.fixture
def store(settings: Settings) -> ChunkStore:
    return ChunkStore(settings.chunk_store_dir)


def uploaded(uploader: Harness, verifier: Harness, source: Path, **payload: str) -> tuple[Event, Event]:
    """Submits and uploads `source`; the verifier has seen the submission. Returns it and UploadCompleted."""
    sub = submission(source, **payload)
    uploader.feed(sub)
    verifier.feed(sub)  # the verifier remembers the submission (its declared sha256)
    return sub, uploader.last(sub.document_id, UPLOAD_COMPLETED)


def test_an_intact_upload_is_verified_chunk_by_chunk(
    uploader: Harness, verifier: Harness, settings: Settings, store: ChunkStore
) -> None:
    source = binary_pdf(settings.allowed_root / "ok.pdf", 7 * CHUNK + 5)
    sub, done = uploaded(uploader, verifier, source)
    reads: list[int] = []
    get = store.get

    def counting_get(doc: str, index: int) -> bytes:
        reads.append(index)
        return get(doc, index)

    verifier.step.chunks.get = counting_get  # type: ignore[attr-defined]
    verifier.feed(done)
    verified = verifier.last(sub.document_id, INTEGRITY_VERIFIED).payload
    assert verified["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (verified["chunks_checked"], verified["size_bytes"]) == (8, source.stat().st_size)
    assert reads == list(range(8))  # streamed: each chunk read once, in order, never the whole file


def test_a_matching_declared_hash_in_any_case_is_accepted(
    uploader: Harness, verifier: Harness, settings: Settings
) -> None:
    source = binary_pdf(settings.allowed_root / "declared.pdf", 2 * CHUNK)
    declared = hashlib.sha256(source.read_bytes()).hexdigest().upper()
    sub, done = uploaded(uploader, verifier, source, declared_sha256=declared)
    verifier.feed(done)
    assert verifier.emitted(sub.document_id) == [INTEGRITY_VERIFIED]


def test_a_wrong_declared_hash_fails_and_the_uploader_deletes_the_chunks(
    uploader: Harness, verifier: Harness, settings: Settings, store: ChunkStore
) -> None:
    source = binary_pdf(settings.allowed_root / "wrong.pdf", 3 * CHUNK)
    sub, done = uploaded(uploader, verifier, source, declared_sha256="0" * 64)
    verifier.feed(done)
    doc = sub.document_id
    assert verifier.emitted(doc) == ["IntegrityFailed"]
    failed = verifier.last(doc, "IntegrityFailed")
    assert f"declared sha256 {'0' * 64} does not match the uploaded content" in failed.payload["reason"]
    assert failed.payload["retryable"] is False
    assert store.chunk_count(doc) == 3  # the verifier only reads; undoing the upload is the uploader's job
    uploader.feed(failed)
    assert uploader.emitted(doc)[-2:] == ["UploadCompensated", DOCUMENT_COMPENSATED]
    assert not store.folder(doc).exists()


def flip_a_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: flip_a_byte(folder / "000002.chunk", 1000), "chunk 2 is corrupted"),
        (lambda folder: (folder / "000004.chunk").unlink(), "chunk 4 is missing from the chunk store"),
        (lambda folder: (folder / "000001.chunk").write_bytes(b""), "chunk 1 is corrupted"),
        (lambda folder: (folder / "manifest.json").unlink(), "manifest is missing"),
    ],
    ids=["a flipped byte", "a deleted chunk", "an emptied chunk", "a deleted manifest"],
)
def test_a_chunk_damaged_on_disk_after_upload_fails_integrity(
    uploader: Harness, verifier: Harness, settings: Settings, store: ChunkStore, damage: object, reason: str
) -> None:
    source = binary_pdf(settings.allowed_root / "damaged.pdf", 5 * CHUNK + 17)
    sub, done = uploaded(uploader, verifier, source)
    assert callable(damage)
    damage(store.folder(sub.document_id))
    verifier.feed(done)
    failed = verifier.last(sub.document_id, "IntegrityFailed").payload
    assert reason in failed["reason"], failed["reason"]
    assert not verifier.log(sub.document_id).has_emitted(INTEGRITY_VERIFIED)


def test_a_redelivered_upload_completed_is_verified_once(
    uploader: Harness, verifier: Harness, settings: Settings
) -> None:
    source = binary_pdf(settings.allowed_root / "again.pdf", CHUNK)
    sub, done = uploaded(uploader, verifier, source)
    verifier.feed(done, offset=50)
    assert verifier.feed(done, offset=50).action == "redelivered"
    assert verifier.feed(done, offset=51).action == "duplicate"
    assert verifier.emitted(sub.document_id) == [INTEGRITY_VERIFIED]
