"""The chunk store and the seekable reader that the verifier and the vector step read through."""

from __future__ import annotations

import gc
import hashlib
import io
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.core.chunkstore import ChunkRef, ChunkStore, OutsideChunkStore
from services.vector.text import chunk_pages, iter_pdf_pages
from tests.documents import paragraph, pdf_file


def store_in_chunks(store: ChunkStore, doc: str, data: bytes, size: int) -> None:
    refs = [ChunkRef(i, off, len(part), store.put(doc, i, part))
            for i, off in enumerate(range(0, len(data), size)) for part in [data[off : off + size]]]
    store.write_manifest(doc, refs, hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize("block", [1, 7, 100, 4096])
def test_reads_fill_whole_blocks_across_chunk_boundaries(tmp_path: Path, block: int) -> None:
    data = bytes(range(256)) * 40
    store = ChunkStore(tmp_path)
    store_in_chunks(store, "d", data, 1000)
    with store.open("d") as reader:
        reader.seek(990)
        buffer = bytearray(block)
        assert reader.readinto(buffer) == block  # one call, even across the boundary at 1000
        assert bytes(buffer) == data[990 : 990 + block]
        reader.seek(-5, io.SEEK_END)
        assert reader.read() == data[-5:]
        reader.seek(0)
        assert reader.read() == data


def test_pdf_pages_read_through_small_chunks_match_the_file(tmp_path: Path) -> None:
    pdf = pdf_file(tmp_path, "doc.pdf", [paragraph(i, 2500) for i in range(30)], image_pages=2)
    store = ChunkStore(tmp_path / "chunks")
    store_in_chunks(store, "d", pdf.read_bytes(), 4096)  # the PDF's objects straddle many chunks
    direct = [(p.number, p.text, p.has_text) for p in iter_pdf_pages(lambda: pdf)]
    chunked = [(p.number, p.text, p.has_text) for p in iter_pdf_pages(lambda: store.open("d"))]
    assert chunked == direct and len(direct) == 32


@pytest.mark.parametrize("hostile", ["..", "../outside", "/tmp", "link-out"])
def test_no_document_id_reaches_outside_the_store(tmp_path: Path, hostile: str) -> None:
    """An id that names anything but a folder directly in the store, a symlink out included, is
    refused before any read, write or delete: the files beside the store survive."""
    root, outside = tmp_path / "chunks", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep.chunk").write_bytes(b"not the store's")
    (root / "link-out").symlink_to(outside)
    store = ChunkStore(root)
    for touch in (store.delete, store.chunk_count, store.manifest, lambda d: store.put(d, 0, b"x")):
        with pytest.raises(OutsideChunkStore):
            touch(hostile)
    assert (outside / "keep.chunk").read_bytes() == b"not the store's" and root.is_dir()


@contextmanager
def eager_garbage_collection() -> Iterator[None]:
    """Collect cyclic garbage every few allocations while the block runs. Each read PDFium makes
    through pypdfium2's callback creates a ctypes array type (a cycle, freed only by the cyclic
    collector); in pytest's large heap, full collections are rare, so that garbage would be
    counted as held and grow with the pages read (CI once saw 45 KB at 30 pages, 77 KB at 120).
    Freezing the heap first keeps each collection small."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(50, 1, 1)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def test_reading_a_document_holds_one_page_at_a_time_whatever_its_length(tmp_path: Path) -> None:
    """G7, on the path the vector step takes (chunk store -> pages -> text chunks): the memory
    Python holds at its peak does not follow the document's length (4x the pages here). Holding
    every page, or every chunk, would make it grow with them. (Speed and the process's whole
    RSS on 300 MB documents are `make bench`'s; this checks the shape.)"""
    store = ChunkStore(tmp_path / "chunks")
    peaks = {}
    # Each size is read twice and measured the second time: what is created once per process on
    # first use (in pypdfium2, or a module another test imported) would otherwise count for one.
    for pages in (30, 120):
        pdf = pdf_file(tmp_path, f"d{pages}.pdf", [paragraph(i, 1800) for i in range(pages)])
        store_in_chunks(store, f"d{pages}", pdf.read_bytes(), 16 * 1024)
        for _ in range(2):
            with eager_garbage_collection():
                tracemalloc.start()
                try:
                    count = sum(1 for _ in chunk_pages(iter_pdf_pages(lambda n=pages: store.open(f"d{n}"))))
                    peaks[pages] = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
        assert count >= 2 * pages
    assert peaks[120] < 1.5 * peaks[30], peaks


def scanned_pdf(path: Path, text_pages: int, scans: int, seed: int = 7) -> Path:
    """Text pages with `scans` incompressible image pages (600x560 RGB noise, ~1 MB each)."""
    import numpy as np
    from fpdf import FPDF
    from PIL import Image

    noise, pdf = np.random.default_rng(seed), FPDF()
    pdf.set_font("helvetica", size=10)
    for i in range(max(text_pages, scans)):
        if i < text_pages:
            pdf.add_page()
            pdf.multi_cell(0, 5, paragraph(i, 800))
        if i < scans:
            pdf.add_page()
            pdf.image(Image.fromarray(noise.integers(0, 256, size=(600, 560, 3), dtype=np.uint8)), x=10, y=10, w=190)
    pdf.output(str(path))
    return path


_PEAK_GROWTH = """
import sys
from pathlib import Path
from services.core.chunkstore import ChunkStore
from services.vector.text import iter_pdf_pages
store, doc, budget = ChunkStore(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
def rss(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) / 1024
pages = iter_pdf_pages(lambda: store.open(doc), reopen_bytes=budget)
next(pages)
first = rss("VmRSS")
for _ in pages:
    pass
print(rss("VmHWM") - first)
"""


def test_scanned_pages_do_not_stay_in_memory(tmp_path: Path) -> None:
    """G7 on scans (through the chunk store's reader, as the vector step reads): PDFium keeps the
    image streams it parsed until the document is closed, so without a byte budget the peak RSS
    grows with the scans read (measured: +38.5 MB for 40 scans of 1 MB here against +7.7 MB for 8;
    372 MB peak for a 295 MiB file with 110 scans); with the reader reopening the document every
    4 MiB read, +4.8 against +4.7 MB. (The default budget is 32 MiB: same shape, bigger files.)"""
    import subprocess
    import sys

    store, growth = ChunkStore(tmp_path / "chunks"), {}
    for scans in (8, 40):
        pdf = scanned_pdf(tmp_path / f"s{scans}.pdf", 8, scans)
        store_in_chunks(store, f"s{scans}", pdf.read_bytes(), 1 << 20)
        out = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, str(store.root), f"s{scans}", str(4 << 20)],
                             capture_output=True, text=True, check=True).stdout
        growth[scans] = float(out)
    assert growth[40] < growth[8] + 10, f"peak RSS growth after the first page, MB: {growth}"
