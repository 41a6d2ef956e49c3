"""Test documents made locally: small PDFs (with and without a text layer) and text files."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpdf import FPDF

from services.demo import scan_images

WORDS = [
    "records",
    "office",
    "case",
    "file",
    "hearing",
    "evidence",
    "witness",
    "statement",
    "archive",
    "register",
    "court",
    "order",
    "appeal",
    "ministry",
    "permit",
    "inspection",
    "report",
    "finding",
    "decision",
    "land",
    "title",
]


def paragraph(seed: int, chars: int = 200) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out)[:chars]


def text_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def pdf_file(folder: Path, name: str, pages: list[str], image_pages: int = 0) -> Path:
    """A PDF with one text page per entry of `pages`, then `image_pages` pages with no text layer."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    for _ in range(image_pages):
        pdf.add_page()
        pdf.set_fill_color(90, 90, 90)
        pdf.rect(20, 20, 150, 200, style="F")  # a "scan": drawing only, no text
    path = folder / name
    pdf.output(str(path))
    return path



def scanned_pdf(folder: Path, name: str, texts: list[str], typed: Sequence[str] = (), **scan: Any) -> Path:
    """`typed` pages with a text layer, then one image-only page per entry of `texts` (see
    `services.demo.scan_images` for `dpi`, `noise`, `rotate`): only OCR can read those."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    for text in typed:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    for image in scan_images(texts, **scan):
        pdf.add_page()
        pdf.image(image, x=0, y=0, w=pdf.w, h=pdf.h)
    path = folder / name
    pdf.output(str(path))
    return path
