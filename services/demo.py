"""The README's first command: ingest a large mixed PDF end to end, with live progress.

Generates (once, cached in .stack/demo/) a PDF of a few hundred MB: text pages of case-file
prose, "scanned" pages that are noise images with no text layer (pictures: OCR skips them), and a
few scans of typed text (read by OCR); starts the six services; submits the PDF; shows a live bar
per step; prints the outcome and the answers to two searches, one found only in a scan.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from fpdf import FPDF
from PIL import Image

from services.cli.main import follow, show_terminal
from services.client import Client
from services.core.config import Settings
from services.operator import access
from services.processes import running_detached, start_all, stop_all
from services.vector.text import best_sentence

KNOWN_PASSAGE = (
    "The harbour master's ledger records that the steamship Aurora arrived on 3 March 1921 "
    "carrying forty crates of surveying instruments for the land registry."
)
SCANNED_PASSAGE = (
    "The surveyor Elise Brandt signed the boundary survey of parcel 17 at Kirchdorf on 9 June 1923, "
    "witnessed by the parish clerk."
)
QUERY = "When did the steamship Aurora arrive and what did it carry?"
SCANNED_QUERY = "Who signed the boundary survey of parcel 17 at Kirchdorf?"
WORDS = (
    "the records office holds case files hearings evidence witness statements archive registers court orders "
    "appeals ministry permits inspection reports findings decisions land titles boundaries surveys deeds parcels "
    "testimony clerk registrar tribunal objection notice amendment schedule annex exhibit"
).split()


def scan_images(texts: list[str], dpi: int = 300, noise: float = 0.0, rotate: float = 0.0,
                seed: int = 0) -> Iterator[Image.Image]:
    """Pages as a scanner sees them: each text typeset (Helvetica 11 pt) and rendered at `dpi` in
    grey, optionally turned by `rotate` degrees and with `noise` (the share of pixels set to black
    or white at random)."""
    import pypdfium2 as pdfium

    typeset = FPDF()
    typeset.set_font("helvetica", size=11)
    for text in texts:
        typeset.add_page()
        typeset.multi_cell(0, 6, text)
    source, rng = pdfium.PdfDocument(bytes(typeset.output())), np.random.default_rng(seed)
    for index in range(len(source)):
        image = source[index].render(scale=dpi / 72, grayscale=True).to_pil()
        if rotate:
            image = image.rotate(rotate, resample=Image.Resampling.BILINEAR, fillcolor=255)
        if noise:
            pixels = np.asarray(image).copy()
            hit = rng.random(pixels.shape) < noise
            pixels[hit] = rng.choice(np.array([0, 255], dtype=np.uint8), size=int(hit.sum()))
            image = Image.fromarray(pixels)
        yield image


def generate(path: Path, text_pages: int, scan_pages: int, ocr_pages: int = 0, seed: int = 7) -> Path:
    """Text pages of ~3,000 characters, noise images (incompressible, like real scans of
    photographs) and, at the end, `ocr_pages` scans of typed text (the last holds SCANNED_PASSAGE)."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    pdf = FPDF()
    pdf.set_font("helvetica", size=8)
    scan_every = max(text_pages // max(scan_pages, 1), 1)
    scans = 0
    for page in range(text_pages):
        pdf.add_page()
        words = [rng.choice(WORDS) for _ in range(480)]
        text = " ".join(words).capitalize() + "."
        if page == text_pages // 2:
            text = KNOWN_PASSAGE + " " + text
        pdf.multi_cell(0, 3.5, text)
        if page % scan_every == scan_every - 1 and scans < scan_pages:
            pdf.add_page()
            pixels = noise.integers(0, 256, size=(1100, 850, 3), dtype=np.uint8)
            pdf.image(Image.fromarray(pixels), x=10, y=10, w=190)
            scans += 1
    typed = [" ".join(rng.choice(WORDS) for _ in range(300)).capitalize() + "." for _ in range(ocr_pages)]
    if typed:
        typed[-1] = SCANNED_PASSAGE + " " + typed[-1]
    for image in scan_images(typed, dpi=200, seed=seed):
        pdf.add_page()
        pdf.image(image, x=0, y=0, w=pdf.w, h=pdf.h)
    tmp = path.with_suffix(".tmp")
    pdf.output(str(tmp))
    os.replace(tmp, path)
    return path


async def ingest(path: Path, size: int) -> tuple[int, str]:
    await access.provision_kafka(Settings())  # idempotent: `make up` did it
    async with Client() as client:
        sub = await client.submit(path, title="Land registry case files 1920-1925", author="Records Office",
                                  organisation="Ministry of Lands", case_number="LR-1921-017",
                                  security_level="restricted")
        print(f"submitted {path.name} ({size / 1e6:.0f} MB) as {sub.document_id}", flush=True)
        started = time.monotonic()
        terminal = await follow(client, sub.document_id, sub.submitted_at_ms)
        show_terminal(terminal)
        print(f"end to end: {time.monotonic() - started:.1f} s")
        return 0 if terminal.event_type == "DocumentCompleted" else 1, sub.document_id


def search(document_id: str) -> None:
    """The questions, asked of this document (an earlier demo run ingested the same text under another id)."""
    from services.vector.adapters import VectorIndex
    from services.vector.embedding import load_embedder

    s = Settings()
    index = VectorIndex.of(s).open()
    embedder = load_embedder("int8", model_dir=s.model_dir)
    for query in (QUERY, SCANNED_QUERY):
        print(f"\nsearch: {query}")
        for hit in index.search(embedder.embed([query])[0].tolist(), 3, document_id):
            read = f" (OCR {hit['ocr_confidence']:.0f}%)" if hit.get("ocr") else ""
            print(f"  {hit['score']:.3f}  page {hit['page']:>4}{read}  {best_sentence(hit['text'], query)[:110]}")
    index.close()


def main() -> int:
    text_pages = int(os.environ.get("UDS3_DEMO_TEXT_PAGES", "400"))
    scan_pages = int(os.environ.get("UDS3_DEMO_SCAN_PAGES", "110"))
    ocr_pages = int(os.environ.get("UDS3_DEMO_OCR_PAGES", "4"))
    folder = Settings().allowed_root / "demo"  # generated in the ingest inbox: nothing to stage
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"case-files-{text_pages}t-{scan_pages}s-{ocr_pages}o.pdf"
    if not path.exists():
        print(f"generating {path.name}: {text_pages} text pages, {scan_pages} scanned pictures, "
              f"{ocr_pages} scanned text pages ...", flush=True)
        generate(path, text_pages, scan_pages, ocr_pages)
    started = [] if running_detached() else start_all()
    try:
        time.sleep(3 if started else 0)  # let the consumers join their groups
        code, document_id = asyncio.run(ingest(path, path.stat().st_size))
        if code == 0:
            search(document_id)
        return code
    finally:
        stop_all(started)


if __name__ == "__main__":
    sys.exit(main())
