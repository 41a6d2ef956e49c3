"""Scanned pages read by OCR (Tesseract through tesserocr, Debian's language data): which pages
are read, what comes out, and what a picture costs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from services.vector.ocr import Ocr, OcrUnavailable, Reading, is_picture
from services.vector.text import iter_pdf_pages, normalize_text
from tests.documents import pdf_file, scanned_pdf

ENGLISH = ("The harbour master kept a ledger of every steamship that entered the port, and on the ninth of "
           "March he recorded that the Aurora arrived from Lisbon carrying cork, olive oil and forty passengers.")
GERMAN = ("Der Hafenmeister führte ein Verzeichnis aller Dampfschiffe, die den Hafen anliefen; am neunten März "
          "vermerkte er, dass die Aurora aus Lissabon mit Kork, Olivenöl und vierzig Fahrgästen eintraf.")


DOC = "6f1c4a52-3d0e-4a8e-9b1c-2f5b8d3e7a10"


class CountingOcr(Ocr):
    """The real engine, counting its runs (a picture must cost none)."""

    runs = 0

    def read(self, image: Any) -> Reading:
        CountingOcr.runs += 1
        return super().read(image)


@pytest.fixture(scope="module")
def ocr() -> CountingOcr:
    return CountingOcr(dpi=200)


def cer(expected: str, got: str) -> float:
    expected, got = normalize_text(expected), normalize_text(got)
    return Levenshtein.distance(expected, got) / len(expected)


def test_a_scanned_page_is_read_and_says_so(tmp_path: Path, ocr: CountingOcr) -> None:
    pdf = scanned_pdf(tmp_path, "scan.pdf", [ENGLISH, GERMAN], dpi=200)
    pages = list(iter_pdf_pages(lambda: pdf, ocr=ocr.for_document(DOC)))
    assert [(p.ocr, p.has_text) for p in pages] == [(True, True), (True, True)]
    assert cer(ENGLISH, pages[0].text) <= 0.02 and cer(GERMAN, pages[1].text) <= 0.02, [p.text for p in pages]
    assert all(p.confidence >= 80 for p in pages)
    without = list(iter_pdf_pages(lambda: pdf))  # OCR off: the scans have no text
    assert [(p.ocr, p.has_text) for p in without] == [(False, False), (False, False)]


class Remembered(dict[tuple[str, int], Reading]):
    """Readings kept as the ledger keeps them."""

    def reading(self, document_id: str, page: int) -> Reading | None:
        return self.get((document_id, page))

    def remember(self, document_id: str, page: int, reading: Reading) -> None:
        self[(document_id, page)] = reading


def test_a_page_read_before_is_not_read_again(tmp_path: Path, ocr: CountingOcr) -> None:
    """A work item resumed after a crash reads its scans back from the ledger: a worker killed
    mid-OCR redoes at most the page it was reading."""
    pdf = scanned_pdf(tmp_path, "scan.pdf", [ENGLISH], typed=[GERMAN], dpi=200)
    kept = Remembered()
    first = list(iter_pdf_pages(lambda: pdf, ocr=ocr.for_document(DOC, kept)))
    assert list(kept) == [(DOC, 2)]  # the scan only
    runs = CountingOcr.runs
    again = list(iter_pdf_pages(lambda: pdf, ocr=ocr.for_document(DOC, kept)))
    assert again == first and CountingOcr.runs == runs


def test_pages_with_a_text_layer_or_no_image_are_not_read(tmp_path: Path, ocr: CountingOcr) -> None:
    pdf = pdf_file(tmp_path, "typed.pdf", [ENGLISH], image_pages=1)  # the second page: a drawn box, no image
    before = CountingOcr.runs
    pages = list(iter_pdf_pages(lambda: pdf, ocr=ocr.for_document(DOC)))
    assert [(p.ocr, p.has_text) for p in pages] == [(False, True), (False, False)]
    assert CountingOcr.runs == before


def test_a_picture_costs_a_thumbnail_not_an_ocr_run(tmp_path: Path, ocr: CountingOcr) -> None:
    """Noise (like the demo's image pages) and a photo-like gradient are told from print by a
    thumbnail's grey levels; Tesseract never runs on them."""
    from fpdf import FPDF

    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, size=(1100, 850), dtype=np.uint8))
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 850, dtype=np.uint8), (1100, 1)))
    pdf = FPDF()
    for image in (noise, gradient):
        pdf.add_page()
        pdf.image(image, x=0, y=0, w=pdf.w, h=pdf.h)
    path = tmp_path / "pictures.pdf"
    pdf.output(str(path))
    before, started = CountingOcr.runs, time.perf_counter()
    pages = list(iter_pdf_pages(lambda: path, ocr=ocr.for_document(DOC)))
    assert [(p.ocr, p.has_text) for p in pages] == [(False, False), (False, False)]
    assert CountingOcr.runs == before
    assert is_picture(noise) and is_picture(gradient)
    assert is_picture(Image.new("L", (100, 100), 255))  # a blank page: no ink, nothing to read
    print(f"\ntwo picture pages in {time.perf_counter() - started:.3f} s")


def test_missing_language_data_is_a_clear_error() -> None:
    with pytest.raises(OcrUnavailable, match=r"no Tesseract data for xyz .*make ocr"):
        Ocr("eng+xyz")
