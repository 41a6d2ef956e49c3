"""Figure 8: text extraction's memory on scanned pages, through the chunk store's reader.

PDFium keeps what it parsed (image streams included) until the document is closed, so the
reader reopens it every `REOPEN_BYTES` read as well as every 1,000 pages. Each file is read
twice in fresh processes: with the byte budget (as the vector step reads) and with pages only
(as it read before), so the table shows what the budget changes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from bench import documents
from bench.env import Run
from bench.report import Section
from services.core.chunkstore import ChunkRef, ChunkStore
from services.vector.text import REOPEN_BYTES

SIZES = [(40, 11), (400, 110), (1400, 380)]  # text pages, scans: about 30 MiB, 300 MiB, 1 GiB
QUICK_SIZES = [(40, 11), (120, 33)]
CHARS = 2000
NO_BUDGET = 1 << 62

_EXTRACT = """
import json, sys, time
from pathlib import Path
from services.core.chunkstore import ChunkStore
from services.vector.text import iter_pdf_pages
store, doc, budget = ChunkStore(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
started, pages, scans = time.perf_counter(), 0, 0
for page in iter_pdf_pages(lambda: store.open(doc), reopen_bytes=budget):
    pages, scans = pages + 1, scans + (not page.has_text)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"pages": pages, "scans": scans, "seconds": time.perf_counter() - started, "peak_mb": hwm}))
"""


def extract(store: ChunkStore, doc: str, budget: int) -> dict[str, float]:
    run = subprocess.run([sys.executable, "-c", _EXTRACT, str(store.root), doc, str(budget)],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(run.stdout))


def run(r: Run) -> Section:
    store = ChunkStore(r.env.chunk_store)
    rows: list[list[str]] = []
    peaks: list[tuple[float, float]] = []
    for text_pages, scans in QUICK_SIZES if r.quick else SIZES:
        path = documents.mixed_pdf(text_pages, scans, CHARS)
        doc, mib = f"scans-{text_pages}-{scans}", path.stat().st_size / 2**20
        store_in_chunks_from(store, doc, path)
        try:
            budget, pages_only = extract(store, doc, REOPEN_BYTES), extract(store, doc, NO_BUDGET)
        finally:
            store.delete(doc)
        peaks.append((mib, budget["peak_mb"]))
        print(f"  {mib:.0f} MiB, {budget['pages']:.0f} pages ({budget['scans']:.0f} scans): peak RSS "
              f"{budget['peak_mb']:.0f} MB with the byte budget, {pages_only['peak_mb']:.0f} MB by pages only",
              flush=True)
        rows.append([f"{mib:.0f} MiB", f"{budget['pages']:.0f} ({budget['scans']:.0f})", f"{budget['peak_mb']:.1f}",
                     f"{pages_only['peak_mb']:.1f}", f"{budget['seconds']:.1f} / {pages_only['seconds']:.1f}"])
    s = Section("scans", r.command, r.quick, "mixed PDFs (prose pages and ~2.8 MB noise-image scans), "
                "stored in 5 MiB chunks, text extracted through the chunk store's reader in a fresh process")
    s.table(["file", "pages (scans)", f"peak RSS MB, reopened every {REOPEN_BYTES >> 20} MiB read",
             "peak RSS MB, reopened every 1,000 pages only", "seconds (budget / pages only)"], rows)
    growth = peaks[-1][1] - peaks[0][1]
    s.verdicts.append(f"peak RSS {peaks[0][0]:.0f} MiB -> {peaks[-1][0]:.0f} MiB: {growth:+.1f} MB (goal <= 16 MB): "
                      f"{'met' if growth <= 16 else 'NOT met'}")
    s.notes.append("Peak RSS is the extracting process's VmHWM (Python, pypdfium2 and PDFium); no embedding.")
    return s


def store_in_chunks_from(store: ChunkStore, doc: str, path: Path) -> None:
    """The file as the uploader stores it (5 MiB chunks and a manifest), one chunk in memory."""
    refs, whole, size = [], hashlib.sha256(), 5 * 2**20
    with open(path, "rb") as f:
        index = 0
        while data := f.read(size):
            whole.update(data)
            refs.append(ChunkRef(index, index * size, len(data), store.put(doc, index, data)))
            index += 1
    store.write_manifest(doc, refs, whole.hexdigest(), sum(c.length for c in refs))
