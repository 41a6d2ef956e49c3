"""Generated inputs, made once and kept in `.stack/bench/files/` (git-ignored) across runs.

* `random_pdf`: random bytes behind a `%PDF-` header (upload + verify only: never parsed);
* `sparse_pdf`: many pages with little text each (the vector step's memory over page count);
* `mixed_pdf`: prose pages plus incompressible "scanned" image pages (like `services.demo`);
* `small_text`: a ~200-character text document (one chunk).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
from fpdf import FPDF
from PIL import Image

from bench.embedding_bench import prose
from bench.env import FILES_DIR

MiB = 2**20
LINE_CHARS = 115  # helvetica 8 pt: ~115 characters fit in 190 mm


def _cached(name: str, make: object) -> Path:
    path = FILES_DIR / name
    if not path.exists():
        print(f"  generating {path.name} (cached for later runs) ...", flush=True)
        tmp = path.with_suffix(".tmp")
        make(tmp)  # type: ignore[operator]
        os.replace(tmp, path)
    return path


def random_pdf(mib: int) -> Path:
    def make(path: Path) -> None:
        with open(path, "wb") as f:
            f.write(b"%PDF-1.7\n")
            left = mib * MiB - 9
            while left > 0:
                block = os.urandom(min(left, 8 * MiB))
                f.write(block)
                left -= len(block)

    return _cached(f"random-{mib}MiB.pdf", make)


def _text_page(pdf: FPDF, text: str) -> None:
    """One page of text, wrapped by hand: pdf.text() is much faster than multi_cell()."""
    pdf.add_page()
    y, line = 12.0, ""
    for word in text.split():
        if len(line) + len(word) + 1 > LINE_CHARS:
            pdf.text(10, y, line)
            y, line = y + 3.5, ""
        line = f"{line} {word}" if line else word
    pdf.text(10, y, line)


def _new_pdf() -> FPDF:
    pdf = FPDF()
    pdf.set_font("helvetica", size=8)
    pdf.set_auto_page_break(False)
    return pdf


def sparse_pdf(pages: int, chars_per_page: int = 200) -> Path:
    def make(path: Path) -> None:
        rng = random.Random(pages)
        pdf = _new_pdf()
        for _ in range(pages):
            _text_page(pdf, prose(rng.randint(chars_per_page * 3 // 4, chars_per_page * 5 // 4), rng))
        pdf.output(str(path))

    return _cached(f"sparse-{pages}p-{chars_per_page}c.pdf", make)


def mixed_pdf(text_pages: int, scan_pages: int, chars_per_page: int) -> Path:
    """Text pages with `scan_pages` noise images (1100x850 RGB, ~2.8 MB each) spread among them."""

    def make(path: Path) -> None:
        rng = random.Random(text_pages)
        noise = np.random.default_rng(text_pages)
        pdf = _new_pdf()
        every = max(text_pages // max(scan_pages, 1), 1)
        scans = 0
        for page in range(text_pages):
            _text_page(pdf, prose(chars_per_page, rng))
            if page % every == every - 1 and scans < scan_pages:
                pdf.add_page()
                pixels = noise.integers(0, 256, size=(1100, 850, 3), dtype=np.uint8)
                pdf.image(Image.fromarray(pixels), x=10, y=10, w=190)
                scans += 1
        pdf.output(str(path))

    return _cached(f"mixed-{text_pages}t-{scan_pages}s-{chars_per_page}c.pdf", make)


def small_text(folder: Path, index: int, chars: int = 200) -> Path:
    path = folder / f"small-{index:05d}.txt"
    path.write_text(prose(chars, random.Random(index)), encoding="utf-8")
    return path
