"""Text extraction and chunking: PDFs are generated with fpdf2 into tmp dirs."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF
from PIL import Image

from services.vector.text import (
    Chunk,
    CorruptPdf,
    EncryptedPdf,
    Page,
    UnreadableDocument,
    chunk_pages,
    iter_pdf_pages,
    iter_text_blocks,
    normalize_text,
    page_count,
)

# Words of exactly 9 chars + 1 space: with size=1000, overlap=100 every chunk is exactly 100
# words and the next chunk starts 90 words later (10 words of overlap).
WORDS_PER_PAGE = 130
PAGES = 4


def page_words(page: int) -> list[str]:
    return [f"p{page}w{i:06d}" for i in range(WORDS_PER_PAGE)]  # 9 chars each


def expected_windows(words: list[str], per_chunk: int = 100, step: int = 90) -> list[list[str]]:
    windows = []
    for start in range(0, len(words), step):
        windows.append(words[start : start + per_chunk])
        if start + per_chunk >= len(words):
            break
    return windows


def write_text_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def multi_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pdf") / "multi.pdf"
    return write_text_pdf(path, [" ".join(page_words(p)) for p in range(1, PAGES + 1)])


# --------------------------------------------------------------------------- PDF pages


def test_pdf_pages_numbers_and_text(multi_pdf: Path) -> None:
    pages = list(iter_pdf_pages(lambda: multi_pdf))
    assert [p.number for p in pages] == list(range(1, PAGES + 1))
    assert all(p.has_text for p in pages)
    for p in pages:
        assert normalize_text(p.text) == " ".join(page_words(p.number))
    assert page_count(lambda: multi_pdf) == PAGES
    assert page_count(lambda: str(multi_pdf)) == PAGES


def test_pdf_chunks_match_known_text(multi_pdf: Path) -> None:
    words = [w for p in range(1, PAGES + 1) for w in page_words(p)]
    page_of = {w: p for p in range(1, PAGES + 1) for w in page_words(p)}
    expected = expected_windows(words)

    chunks = list(chunk_pages(iter_pdf_pages(lambda: multi_pdf), size=1000, overlap=100))

    assert len(chunks) == len(expected) == 6
    assert [c.index for c in chunks] == list(range(len(expected)))
    assert [c.text for c in chunks] == [" ".join(w) for w in expected]
    assert [c.page for c in chunks] == [page_of[w[0]] for w in expected]
    assert [c.page for c in chunks] == [1, 1, 2, 3, 3, 4]


def test_pdf_stream_opener_reopens_and_closes(multi_pdf: Path) -> None:
    data = multi_pdf.read_bytes()
    streams: list[io.BytesIO] = []

    def opener() -> io.BytesIO:
        streams.append(io.BytesIO(data))
        return streams[-1]

    from_stream = list(iter_pdf_pages(opener, reopen_every=1))
    assert len(streams) == PAGES  # opened once per page
    assert all(s.closed for s in streams)
    assert from_stream == list(iter_pdf_pages(lambda: multi_pdf))


def test_pdf_is_reopened_once_its_byte_budget_is_read(multi_pdf: Path) -> None:
    """A budget smaller than one page reopens the document for every page; the pages are the same."""
    opened: list[int] = []

    def opener() -> Path:
        opened.append(1)
        return multi_pdf

    assert list(iter_pdf_pages(opener, reopen_bytes=1)) == list(iter_pdf_pages(lambda: multi_pdf))
    assert len(opened) == PAGES


class CountingReads(io.FileIO):
    """A file that counts the bytes read from it (what a chunk store would serve)."""

    read_total = 0

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer) or 0
        CountingReads.read_total += n
        return n


def test_a_work_items_pages_cost_their_own_bytes_not_the_files(tmp_path: Path) -> None:
    """A worker extracts only its item's pages: PDFium reads the cross-reference table and those
    pages' objects, not the scans of other items."""
    from tests.unit.test_chunkstore import scanned_pdf

    pdf = scanned_pdf(tmp_path / "mixed.pdf", text_pages=12, scans=4)  # ~1 MB scans on pages 2, 4, 6, 8
    size = pdf.stat().st_size

    def bytes_read(pages: range | None) -> tuple[int, list[int]]:
        CountingReads.read_total = 0
        numbers = [p.number for p in iter_pdf_pages(lambda: CountingReads(pdf), pages=pages)]
        return CountingReads.read_total, numbers

    whole, every = bytes_read(None)
    tail, numbers = bytes_read(range(8, 16))  # text pages 9-16: no scan among them
    assert every == list(range(1, 17)) and numbers == list(range(9, 17))
    assert whole >= 0.9 * size and tail < 0.05 * size, (whole, tail, size)
    with pytest.raises(CorruptPdf, match="pages 15-18 asked of a 16-page PDF"):
        list(iter_pdf_pages(lambda: pdf, pages=range(14, 18)))


def test_pdf_opener_stream_closed_on_early_stop(multi_pdf: Path) -> None:
    stream = open(multi_pdf, "rb")  # noqa: SIM115 - ownership goes to iter_pdf_pages
    pages = iter_pdf_pages(lambda: stream)
    assert next(pages).number == 1
    pages.close()
    assert stream.closed


def test_image_only_page_has_no_text(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 5, "A page with a text layer.")
    pdf.add_page()  # a "scanned" page: one raster image, no text layer
    pdf.image(Image.new("RGB", (120, 160), (210, 205, 190)), x=10, y=10, w=150)
    path = tmp_path / "scan.pdf"
    pdf.output(str(path))

    pages = list(iter_pdf_pages(lambda: path))
    assert [(p.number, p.has_text) for p in pages] == [(1, True), (2, False)]
    chunks = list(chunk_pages(pages))
    assert [(c.page, c.text) for c in chunks] == [(1, "A page with a text layer.")]


def test_encrypted_pdf(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    pdf.add_page()
    pdf.multi_cell(0, 5, "confidential")
    path = tmp_path / "encrypted.pdf"
    pdf.output(str(path))

    with pytest.raises(EncryptedPdf, match="encrypted"):
        list(iter_pdf_pages(lambda: path))
    with pytest.raises(EncryptedPdf):
        page_count(lambda: io.BytesIO(path.read_bytes()))


def test_owner_password_only_pdf_is_readable(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    pdf.set_encryption(owner_password="owner-secret")  # permissions only, opens without password
    pdf.add_page()
    pdf.multi_cell(0, 5, "readable")
    path = tmp_path / "owner.pdf"
    pdf.output(str(path))
    assert [p.text for p in iter_pdf_pages(lambda: path)] == ["readable"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda good: b"", id="zero-bytes"),
        pytest.param(lambda good: good[: len(good) // 2], id="truncated-half"),
        pytest.param(lambda good: good[:-300], id="truncated-tail"),
        pytest.param(lambda good: b"%PDF-1.7\nnot really a pdf\n", id="header-only"),
        pytest.param(lambda good: bytes(range(256)) * 20, id="garbage"),
    ],
)
def test_corrupt_pdf(tmp_path: Path, multi_pdf: Path, make: object) -> None:
    assert callable(make)
    data: bytes = make(multi_pdf.read_bytes())
    path = tmp_path / "bad.pdf"
    path.write_bytes(data)
    with pytest.raises(CorruptPdf) as excinfo:
        list(iter_pdf_pages(lambda: path))
    assert isinstance(excinfo.value, UnreadableDocument)
    assert str(excinfo.value)
    stream = io.BytesIO(data)
    with pytest.raises(CorruptPdf):
        page_count(lambda: stream)
    assert stream.closed


def test_missing_file_is_not_reported_as_corrupt(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_pdf_pages(lambda: tmp_path / "nope.pdf"))


# --------------------------------------------------------------------------- plain text


def test_text_blocks_cut_at_whitespace_and_decode_utf8() -> None:
    text = ("grüße " * 50 + "\n") * 10  # multi-byte chars straddle the read boundaries
    blocks = list(iter_text_blocks(io.BytesIO(text.encode()), block_chars=100))
    assert [b.number for b in blocks] == list(range(1, len(blocks) + 1))
    assert "".join(b.text for b in blocks) == text
    assert all(0 < len(b.text) <= 100 for b in blocks)
    assert all(b.text.endswith((" ", "\n")) for b in blocks)


def test_text_blocks_invalid_utf8_replaced_and_empty() -> None:
    blocks = list(iter_text_blocks(io.BytesIO(b"ok \xff\xfe bad"), block_chars=64_000))
    assert blocks == [Page(1, "ok \ufffd\ufffd bad", True)]
    assert list(iter_text_blocks(io.BytesIO(b""))) == []
    assert [b.has_text for b in iter_text_blocks(io.BytesIO(b"   \n\n "))] == [False]


def test_text_blocks_long_word_is_cut_hard() -> None:
    blocks = list(iter_text_blocks(io.BytesIO(b"x" * 250), block_chars=100))
    assert [len(b.text) for b in blocks] == [100, 100, 50]


# --------------------------------------------------------------------------- chunking


def pages_of(*texts: str) -> list[Page]:
    return [Page(i + 1, t, bool(t.strip())) for i, t in enumerate(texts)]


def test_chunks_overlap_and_cover_everything() -> None:
    words = [f"word{i}" for i in range(2000)]
    full = " ".join(words)
    chunks = list(chunk_pages(pages_of(full), size=1000, overlap=100))
    assert all(0 < len(c.text) <= 1000 for c in chunks)
    assert chunks[0].text.startswith("word0 ") and chunks[-1].text.endswith("word1999")
    for a, b in itertools.pairwise(chunks):
        a_words, b_words = a.text.split(" "), b.text.split(" ")
        shared = len(a_words) - a_words.index(b_words[0])
        assert a_words[-shared:] == b_words[:shared]  # b starts inside a: the overlap
        assert 50 <= len(" ".join(b_words[:shared])) <= 100
        assert full.index(b.text) > full.index(a.text)  # progress


def test_chunking_is_deterministic_and_streaming() -> None:
    pages = pages_of(*[" ".join(f"t{p}_{i}" for i in range(300)) for p in range(5)])
    first = list(chunk_pages(iter(pages)))
    assert first == list(chunk_pages(pages))
    assert all(isinstance(c, Chunk) for c in first)

    consumed: list[int] = []

    def lazy() -> Iterator[Page]:
        for p in pages:
            consumed.append(p.number)
            yield p

    gen = chunk_pages(lazy())
    next(gen)
    assert consumed == [1]  # the first chunk needs only the first page


def test_whitespace_normalised_and_no_empty_chunks() -> None:
    pages = pages_of("  alpha\t\tbeta\r\n\r\ngamma  ", "", "   \n ", "de\u00adlta epsi\u0002\r\nlon\x00 zeta\u00a0eta")
    chunks = list(chunk_pages(pages, size=1000, overlap=100))
    assert [(c.index, c.page, c.text) for c in chunks] == [
        (0, 1, "alpha beta gamma delta epsilon zeta eta")
    ]
    assert list(chunk_pages(pages_of("", "  \n"))) == []
    assert list(chunk_pages([])) == []


def test_chunk_page_is_where_it_starts_across_pages() -> None:
    # 95 words of 9 chars = 949 chars per page: every chunk crosses a page boundary.
    pages = [Page(p, " ".join(f"{p:02d}w{i:06d}" for i in range(95)), True) for p in (3, 4, 5)]
    chunks = list(chunk_pages(pages, size=1000, overlap=100))
    for c in chunks:
        assert c.page == int(c.text[:2])
    assert [c.page for c in chunks] == [3, 3, 4, 5]


def test_single_huge_word_is_cut_hard() -> None:
    chunks = list(chunk_pages(pages_of("a" * 2500), size=1000, overlap=100))
    assert [len(c.text) for c in chunks] == [1000, 1000, 700]
    assert "".join(c.text[100:] if i else c.text for i, c in enumerate(chunks)) == "a" * 2500


def test_invalid_chunk_parameters() -> None:
    with pytest.raises(ValueError):
        list(chunk_pages([], size=100, overlap=50))
    with pytest.raises(ValueError):
        list(chunk_pages([], size=100, overlap=-1))
