"""Streaming text extraction and chunking with flat memory.

* ``iter_pdf_pages`` walks a PDF page by page with pypdfium2, closing and reopening the document
  every ``reopen_every`` pages or once ``reopen_bytes`` have been read through it: PDFium keeps
  what it parsed (page objects, image streams) until the document is closed, so its memory grows
  with the pages visited and, on scans, with their bytes.
* ``iter_text_blocks`` reads plain UTF-8 text in blocks of ~``block_chars`` characters.
* ``chunk_pages`` turns any stream of pages into overlapping ~1000-character chunks.

Nothing holds more than one page (or one text block) plus the unfinished chunk in memory.
pypdfium2 is not thread-safe: every call into it here holds one process-wide lock (a vector
process extracts for its saga step and for its work items at once).
"""

from __future__ import annotations

import codecs
import io
import os
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

if TYPE_CHECKING:
    from services.vector.ocr import DocumentOcr

# What the opener returns: a filesystem path, or a readable + seekable binary stream.
# A stream returned by the opener is owned (and closed) by this module.
PdfSource = str | os.PathLike[str] | BinaryIO
Opener = Callable[[], PdfSource]


@dataclass(frozen=True, slots=True)
class Page:
    number: int  # 1-based
    text: str
    has_text: bool
    ocr: bool = False  # the text was read from the page's image (a scan)
    confidence: float = 0.0  # OCR's mean word confidence, 0-100


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int  # 0-based, consecutive within one document
    page: int  # page (or text block) where the chunk starts
    text: str


class UnreadableDocument(Exception):
    """The document cannot be read at all (not a transient error: retrying will not help)."""


class EncryptedPdf(UnreadableDocument):
    """The PDF needs a password."""


class CorruptPdf(UnreadableDocument):
    """The bytes are not a parseable PDF (empty, truncated, damaged or not a PDF at all)."""


# --------------------------------------------------------------------------- PDF

_PDFIUM = threading.RLock()  # PDFium is one library state per process: one caller at a time


class _Counted(io.RawIOBase):
    """A stream that counts the bytes read through it (what PDFium may be holding on to)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.bytes_read = stream, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def readinto(self, buffer: Any) -> int:
        n = self.stream.readinto(buffer)  # type: ignore[attr-defined]
        self.bytes_read += n or 0
        return int(n or 0)

    def close(self) -> None:
        self.stream.close()
        super().close()


class _OpenPdf:
    """One open PdfDocument plus the stream it reads from (a path is opened as one, so every
    byte PDFium reads is counted)."""

    def __init__(self, opener: Opener) -> None:
        source = opener()
        if isinstance(source, str | os.PathLike):
            source = open(source, "rb", buffering=0)  # noqa: SIM115 (closed with the document)
        self._stream: _Counted | None = _Counted(source)
        try:
            with _PDFIUM:
                self.doc = pdfium.PdfDocument(self._stream)
        except pdfium.PdfiumError as exc:
            self._close_stream()
            code = getattr(exc, "err_code", None)
            if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
                raise EncryptedPdf(f"PDF is encrypted (password required or unsupported): {exc}") from exc
            if code == pdfium_c.FPDF_ERR_SUCCESS:  # pypdfium2 refuses documents with 0 pages
                raise CorruptPdf("PDF has no pages") from exc
            raise CorruptPdf(f"not a readable PDF: {exc}") from exc
        except BaseException:
            self._close_stream()
            raise

    def __len__(self) -> int:
        with _PDFIUM:
            return len(self.doc)

    @property
    def bytes_read(self) -> int:
        return self._stream.bytes_read if self._stream is not None else 0

    def page(self, index: int, ocr: DocumentOcr | None = None) -> Page:
        """The page's text layer or, for a scan when `ocr` is given, what OCR reads in it (or
        read before, for this document). Tesseract runs outside the PDFium lock: another thread
        may extract meanwhile."""
        number = index + 1
        with _calling_pdfium(number):
            text, scan = self._text(index, ocr)
        if scan and ocr is not None:
            reading = ocr.known(number)
            if reading is None:
                with _calling_pdfium(number):
                    image = self._render(index, ocr.dpi)
                reading = ocr.read(number, image) if image is not None else None
            if reading is not None:
                return Page(number, reading.text, bool(reading.text.strip()), ocr=True, confidence=reading.confidence)
        return Page(number, text, bool(text.strip()))

    def _text(self, index: int, ocr: DocumentOcr | None) -> tuple[str, bool]:
        """The page's text layer, and whether it is a scan OCR should read."""
        page = self.doc[index]
        try:
            textpage = page.get_textpage()
            try:
                text: str = textpage.get_text_bounded()  # full Unicode (get_text_range is UCS-2)
            finally:
                textpage.close()
            return text, ocr is not None and ocr.wants(text, _image_cover(page))
        finally:
            page.close()

    def _render(self, index: int, dpi: int) -> Any:
        """The page in grey at `dpi`, or None when its thumbnail shows a picture, not print (a
        photo or noise costs one thumbnail, never a Tesseract run)."""
        from services.vector.ocr import THUMB_DPI, is_picture

        page = self.doc[index]
        try:
            if is_picture(page.render(scale=THUMB_DPI / 72, grayscale=True).to_pil()):
                return None
            return page.render(scale=dpi / 72, grayscale=True).to_pil()
        finally:
            page.close()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        with _PDFIUM:
            self.doc.close()
        self._close_stream()


@contextmanager
def _calling_pdfium(number: int) -> Iterator[None]:
    """One caller in PDFium at a time; what it cannot read of a page is a corrupt PDF."""
    with _PDFIUM:
        try:
            yield
        except pdfium.PdfiumError as exc:
            raise CorruptPdf(f"page {number} cannot be read: {exc}") from exc


def _image_cover(page: Any) -> float:
    """The share of the page under its largest image (0 when it has none)."""
    width, height = page.get_size()
    largest = 0.0
    for image in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=2):
        left, bottom, right, top = image.get_bounds()
        w = max(0.0, min(right, width) - max(left, 0.0))
        h = max(0.0, min(top, height) - max(bottom, 0.0))
        largest = max(largest, w * h)
    return largest / (width * height) if width and height else 0.0


def page_count(opener: Opener) -> int:
    """Number of pages; raises ``EncryptedPdf`` / ``CorruptPdf`` like ``iter_pdf_pages``."""
    pdf = _OpenPdf(opener)
    try:
        return len(pdf)
    finally:
        pdf.close()


REOPEN_BYTES = 32 * 1024 * 1024


def iter_pdf_pages(
    opener: Opener, reopen_every: int = 1000, reopen_bytes: int = REOPEN_BYTES, pages: range | None = None,
    ocr: DocumentOcr | None = None,
) -> Generator[Page, None, None]:
    """Yield every page of the PDF in order (or those of ``pages``, 0-based indexes: a work
    item's), reopening the document every ``reopen_every`` pages and whenever ``reopen_bytes`` have
    been read since it was opened (scanned pages: their images). PDFium reads only the objects of
    the pages asked for (and the cross-reference table), so an item costs its own bytes.

    ``opener`` is called once per (re)open and must return the same document each time: a path
    or a fresh readable+seekable binary stream (which is closed here). A page without a text
    layer (scanned image) is yielded with ``has_text=False``, unless ``ocr`` is given and the
    page is a scan that may hold text: then it is rendered (one page at a time) and its text is
    what Tesseract reads (``ocr=True``). Closing the generator early closes the document.
    """
    if reopen_every < 1:
        raise ValueError("reopen_every must be >= 1")
    pdf = _OpenPdf(opener)
    try:
        total = len(pdf)
        wanted = pages if pages is not None else range(total)
        if wanted and not (wanted.start >= 0 and wanted.stop <= total):
            raise CorruptPdf(f"pages {wanted.start + 1}-{wanted.stop} asked of a {total}-page PDF")
        opened_at = wanted.start
        for index in wanted:
            if index > opened_at and (index - opened_at >= reopen_every or pdf.bytes_read >= reopen_bytes):
                opened_at = index
                pdf.close()
                pdf = _OpenPdf(opener)
                if len(pdf) != total:
                    raise CorruptPdf(f"page count changed on reopen ({total} -> {len(pdf)})")
            yield pdf.page(index, ocr)
    finally:
        pdf.close()


# --------------------------------------------------------------------------- plain text


def iter_text_blocks(fileobj: BinaryIO, block_chars: int = 64_000) -> Iterator[Page]:
    """Yield a binary UTF-8 stream as Page blocks of about ``block_chars`` characters.

    Blocks are numbered like pages (1, 2, 3, ...), so a chunk's ``page`` locates it within
    ~``block_chars`` characters. Blocks end at whitespace when there is some in the block, so
    words are not split. Invalid UTF-8 becomes U+FFFD. The stream is not closed.
    """
    if block_chars < 1:
        raise ValueError("block_chars must be >= 1")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    number = 0
    eof = False
    while not eof:
        data = fileobj.read(block_chars)  # bytes; a block has at most this many chars
        eof = not data
        pending += decoder.decode(data, final=eof)
        while len(pending) > block_chars or (eof and pending):
            cut = min(len(pending), block_chars)
            if cut < len(pending):
                space = max(pending.rfind(" ", 0, cut), pending.rfind("\n", 0, cut))
                if space > 0:
                    cut = space + 1
            block, pending = pending[:cut], pending[cut:]
            number += 1
            yield Page(number=number, text=block, has_text=bool(block.strip()))


# --------------------------------------------------------------------------- chunking

# PDFium marks a hyphen at a line break with U+0002 or U+FFFE; soft hyphens are invisible.
_LINE_HYPHEN = re.compile(r"[\u0002\ufffe\u00ad]\s*")
_CONTROL = re.compile(r"[\u0000-\u0008\u000e-\u001f\u007f\ufeff\uffff]")


def best_sentence(text: str, query: str) -> str:
    """The sentence of a chunk that shares the most words with a query (what a reader looks for
    in a search hit)."""
    asked = set(query.lower().replace("?", "").split())
    return max(text.split(". "), key=lambda s: len(asked & set(s.lower().split())))


def normalize_text(text: str) -> str:
    """Join words hyphenated at line ends, drop control chars, collapse all whitespace to one space."""
    text = _CONTROL.sub("", _LINE_HYPHEN.sub("", text))
    return " ".join(text.split())


def chunk_pages(pages: Iterable[Page], size: int = 1000, overlap: int = 100) -> Iterator[Chunk]:
    """Split the text of ``pages`` into chunks of at most ``size`` characters.

    Pages are normalised (``normalize_text``) and joined with a single space, so chunks may
    cross page boundaries; each chunk carries the number of the page where it starts. A chunk
    ends at the last space within its ``size`` window (words are cut only if a single word
    spans more than half the window), and the next one starts ``overlap`` characters before
    that end, moved forward to the next word start. Deterministic: the same text always gives
    the same chunks. Only the current page plus one unfinished chunk are kept in memory.
    """
    if size < 2 or not 0 <= overlap < size // 2:
        raise ValueError("need size >= 2 and 0 <= overlap < size // 2")
    buf = ""  # text not yet fully emitted
    starts: list[tuple[int, int]] = []  # (offset in buf, page number), ascending
    emitted_to = 0  # buf[:emitted_to] is already contained in some emitted chunk
    index = 0

    def page_at(offset: int) -> int:
        page = starts[0][1]
        for start, number in starts:
            if start > offset:
                break
            page = number
        return page

    def take(final: bool) -> Iterator[Chunk]:
        nonlocal buf, starts, emitted_to, index
        while len(buf) > size or (final and len(buf) > emitted_to):
            if len(buf) <= size:  # final piece
                end = len(buf)
            else:
                space = buf.rfind(" ", size // 2, size + 1)
                end = space if space > 0 else size
            text = buf[:end].strip()
            if text:
                yield Chunk(index=index, page=page_at(0), text=text)
                index += 1
            if end >= len(buf):
                buf, starts, emitted_to = "", [], 0
                return
            next_start = max(end - overlap, 1)
            if buf[next_start - 1] != " ":  # inside a word: move to the next word start
                space = buf.find(" ", next_start, end)
                next_start = space + 1 if space >= 0 else next_start
            while next_start < len(buf) and buf[next_start] == " ":
                next_start += 1
            buf = buf[next_start:]
            emitted_to = max(end - next_start, 0)
            shifted = [(start - next_start, number) for start, number in starts]
            # The page in effect at the new offset 0 is the last one starting at or before it.
            keep = [s for s in shifted if s[0] > 0]
            head = [s for s in shifted if s[0] <= 0][-1:]
            starts = [(0, head[0][1]), *keep] if head else keep

    for page in pages:
        text = normalize_text(page.text)
        if not text:
            continue
        if buf:
            buf += " "
        starts.append((len(buf), page.number))
        buf += text
        yield from take(final=False)
    yield from take(final=True)
