"""The chunk store's port (`Chunks`): the same assertions against the local folder, the object
store (the stack's s3proxy, through the S3 API) and the in-memory adapter, so a test that uses
the in-memory one tests what production does, on either store."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.core.chunkstore import ChunkRef, Chunks, ChunkStore, InMemoryChunks, OutsideChunkStore
from services.core.config import Settings
from services.core.s3chunks import WINDOW, S3Chunks
from services.vector.text import iter_pdf_pages
from tests.documents import paragraph, pdf_file


@pytest.fixture(params=["in-memory", "folder", pytest.param("s3", marks=pytest.mark.stack)])
def chunks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chunks]:
    if request.param == "in-memory":
        yield InMemoryChunks()
    elif request.param == "folder":
        yield ChunkStore(tmp_path / "chunks")
    else:
        stack: Settings = request.getfixturevalue("stack")
        port = os.environ.get("UDS3_S3_PORT", "18333")
        store = S3Chunks.of(replace(stack, chunk_store_url=f"s3://uds3-tests/{stack.deployment}/{uuid.uuid4().hex[:8]}",
                                    s3_endpoint=f"http://127.0.0.1:{port}"))
        store.ensure_bucket()
        yield store
        for doc in store.documents():
            store.delete(doc)


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


def test_a_pdf_reads_page_by_page_through_small_chunks(chunks: Chunks, tmp_path: Path) -> None:
    pdf = pdf_file(tmp_path, "doc.pdf", [paragraph(i, 2500) for i in range(12)], image_pages=1)
    store_in_chunks(chunks, "d", pdf.read_bytes(), 4096)  # the PDF's objects straddle many chunks
    direct = [(p.number, p.text) for p in iter_pdf_pages(lambda: pdf)]
    assert [(p.number, p.text) for p in iter_pdf_pages(lambda: chunks.open("d"))] == direct


def test_a_read_spans_the_object_stores_window(chunks: Chunks) -> None:
    """One chunk larger than what the object store's reader fetches at once."""
    data = os.urandom(2 * WINDOW + 100)
    store_in_chunks(chunks, "d", data, len(data))
    with chunks.open("d") as stream:
        stream.seek(WINDOW - 5)
        assert stream.read(10) == data[WINDOW - 5 : WINDOW + 5]
        stream.seek(-50, 2)
        assert stream.read() == data[-50:]
    assert chunks.whole_sha256("d") == hashlib.sha256(data).hexdigest() and chunks.whole_sha256("none") is None
