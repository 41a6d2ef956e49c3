"""The chunk store's port (`Chunks`): the same assertions against the local folder and the
in-memory adapter, so a test that uses the in-memory one tests what production does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.core.chunkstore import ChunkRef, Chunks, ChunkStore, InMemoryChunks, OutsideChunkStore


@pytest.fixture(params=["in-memory", "folder"])
def chunks(request: pytest.FixtureRequest, tmp_path: Path) -> Chunks:
    return InMemoryChunks() if request.param == "in-memory" else ChunkStore(tmp_path / "chunks")


def store_in_chunks(store: Chunks, doc: str, data: bytes, size: int) -> list[ChunkRef]:
    refs = [ChunkRef(i, off, len(part), store.put(doc, i, part))
            for i, off in enumerate(range(0, len(data), size)) for part in [data[off : off + size]]]
    store.write_manifest(doc, refs, hashlib.sha256(data).hexdigest(), len(data))
    return refs


def test_a_document_reads_back_chunk_by_chunk_and_as_one_stream(chunks: Chunks) -> None:
    data = bytes(range(256)) * 10
    refs = store_in_chunks(chunks, "d", data, 1000)
    assert refs[1].sha256 == hashlib.sha256(data[1000:2000]).hexdigest()
    assert chunks.manifest("d") == refs and chunks.chunk_count("d") == 3
    assert chunks.get("d", 2) == data[2000:]
    with chunks.open("d") as stream:
        stream.seek(995)
        assert stream.read(10) == data[995:1005]
        stream.seek(0)
        assert stream.read() == data


def test_a_chunk_written_again_replaces_the_first(chunks: Chunks) -> None:
    """A resumed upload rewrites the chunks that were in flight: the last write wins, no copy."""
    chunks.put("d", 0, b"first")
    chunks.put("d", 0, b"again")
    assert chunks.get("d", 0) == b"again" and chunks.chunk_count("d") == 1


def test_delete_removes_every_chunk_and_is_idempotent(chunks: Chunks) -> None:
    store_in_chunks(chunks, "d", b"x" * 2500, 1000)
    store_in_chunks(chunks, "other", b"y" * 10, 1000)
    assert chunks.documents() == ["d", "other"]
    assert chunks.delete("d") == 3
    assert chunks.delete("d") == 0 and chunks.documents() == ["other"]
    with pytest.raises(FileNotFoundError):
        chunks.manifest("d")
    assert chunks.get("other", 0) == b"y" * 10


@pytest.mark.parametrize("hostile", ["..", ".", "", "../outside", "a/b", "/tmp"])
def test_an_id_that_is_not_one_plain_name_is_refused(chunks: Chunks, hostile: str) -> None:
    for touch in (chunks.delete, chunks.chunk_count, chunks.manifest, lambda d: chunks.put(d, 0, b"x")):
        with pytest.raises(OutsideChunkStore):
            touch(hostile)
