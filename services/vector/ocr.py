"""Reading scanned pages: Tesseract through tesserocr, one rendered page at a time.

A page is read by OCR when it looks like a scan: an image covers at least `SCAN_COVER` of it and
its text layer has fewer than `min_chars` characters (a scan with a stamped page number still
counts; a searchable PDF with its OCR layer, or a short cover page without images, does not).
Before the page is rendered at full resolution, a thumbnail decides whether it could hold text
at all: a page of text is mostly light background with a little dark ink, while a photo or noise
is not (`is_picture`); pictures cost one thumbnail, not a Tesseract run.

tesserocr runs Tesseract's C++ API in this process (the model loads once per engine, no
temporary image files, mean word confidence from the same call); its wheel brings the engine,
Debian's `tesseract-ocr-deu`/`-eng` packages the language data (`make ocr`). One engine serves
one thread at a time: engines are pooled. Tesseract's OpenMP threads are limited to one, so a
worker pinned to a core uses that core (FINDINGS.md: 5.8 s a page with its default threading
on 2 cores, 2.3 s with one thread).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # before Tesseract is loaded

DEBIAN_TESSDATA = Path("/usr/share/tesseract-ocr/5/tessdata")
SCAN_COVER = 0.3  # an image covering this share of the page makes it a scan candidate
THUMB_DPI = 72  # enough to tell ink on paper from a picture (A4: 595 x 842 pixels)
LIGHT, INK = 160, 128  # grey levels of paper and of ink in the thumbnail


class OcrUnavailable(RuntimeError):
    """The language data for the configured languages is not installed."""


@dataclass(frozen=True)
class Reading:
    text: str
    confidence: float  # Tesseract's mean word confidence, 0-100


def is_picture(thumbnail: Any) -> bool:
    """True for a page that cannot be printed text: print is mostly light paper (>= 60 % of the
    pixels) with some ink (0.05-35 %: three lines of 11 pt text are 0.4 %); a photo or noise has
    far less light paper, a blank page no ink."""
    grey = np.asarray(thumbnail.convert("L"), dtype=np.uint8)
    light, ink = float((grey > LIGHT).mean()), float((grey < INK).mean())
    return not (light >= 0.6 and 0.0005 <= ink <= 0.35)


class Ocr:
    """Tesseract engines for `langs` (e.g. "deu+eng"), rendering at `dpi`."""

    def __init__(self, langs: str = "deu+eng", dpi: int = 300, min_chars: int = 100,
                 tessdata: Path | str | None = None) -> None:
        self.langs, self.dpi, self.min_chars = langs, dpi, min_chars
        self.tessdata = Path(tessdata or os.environ.get("TESSDATA_PREFIX") or DEBIAN_TESSDATA)
        missing = [lang for lang in langs.split("+") if not (self.tessdata / f"{lang}.traineddata").is_file()]
        if missing:
            raise OcrUnavailable(f"no Tesseract data for {', '.join(missing)} in {self.tessdata} "
                                 "(make ocr installs Debian's tesseract-ocr-deu and -eng; UDS3_OCR=off turns OCR off)")
        self._engines: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def wants(self, text: str, image_cover: float) -> bool:
        """Whether a page with this text layer and this much of it under an image is a scan."""
        return image_cover >= SCAN_COVER and sum(1 for c in text if not c.isspace()) < self.min_chars

    @contextmanager
    def _engine(self) -> Iterator[Any]:
        import tesserocr

        try:
            engine = self._engines.get_nowait()
        except queue.Empty:
            engine = tesserocr.PyTessBaseAPI(path=str(self.tessdata), lang=self.langs)
        try:
            yield engine
        finally:
            self._engines.put(engine)

    def read(self, image: Any) -> Reading:
        from PIL import ImageFilter

        # A 3x3 median first: speckle (salt-and-pepper noise, dust) otherwise wrecks Tesseract's
        # binarisation: 2 % noise on a 200 dpi scan read 98 % wrong without it, 0.7 % with it;
        # clean text reads the same, for about a fifth more time (docs/decisions.md).
        image = image.filter(ImageFilter.MedianFilter(3))
        with self._engine() as engine:
            engine.SetImage(image)
            text = engine.GetUTF8Text()
            return Reading(text, float(engine.MeanTextConf()))

    def for_document(self, document_id: str, readings: Readings | None = None) -> DocumentOcr:
        return DocumentOcr(self, document_id, readings)

    def close(self) -> None:
        while True:
            try:
                self._engines.get_nowait().End()
            except queue.Empty:
                return


class Readings(Protocol):
    """Where a document's OCR readings are kept (the vector ledger)."""

    def reading(self, document_id: str, page: int) -> Reading | None: ...
    def remember(self, document_id: str, page: int, reading: Reading) -> None: ...


class DocumentOcr:
    """OCR of one document's pages. Each reading is remembered as soon as it is made: a work
    item resumed after a crash reads its pages back instead of running Tesseract again, so a
    worker killed mid-OCR redoes at most the page it was reading."""

    def __init__(self, ocr: Ocr, document_id: str, readings: Readings | None) -> None:
        self.ocr, self.document_id, self.readings, self.dpi = ocr, document_id, readings, ocr.dpi

    def wants(self, text: str, image_cover: float) -> bool:
        return self.ocr.wants(text, image_cover)

    def known(self, page: int) -> Reading | None:
        return self.readings.reading(self.document_id, page) if self.readings is not None else None

    def read(self, page: int, image: Any) -> Reading:
        reading = self.ocr.read(image)
        if self.readings is not None:
            self.readings.remember(self.document_id, page, reading)
        return reading
