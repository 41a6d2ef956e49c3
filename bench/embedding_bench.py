"""Embedding and PDF extraction micro-benchmark (standalone; prints markdown).

    .venv/bin/python bench/embedding_bench.py [--chunks 128] [--pages 300] [--threads N]

* bare model throughput (chunks/s) of the int8 and fp32 ONNX graphs on ~1000-char chunks of
  realistic prose, tokenisation included;
* cosine int8 vs fp32 (mean / min);
* pypdfium2 text extraction pages/s (and with chunking) on a generated multi-page PDF.

Builds the model cache first if needed (``services.vector.model_setup``; ``UDS3_MODEL_DIR``).
Keep runs short: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.vector import model_setup
from services.vector.embedding import OnnxEmbedder
from services.vector.text import chunk_pages, iter_pdf_pages

SENTENCES = [
    "The board of directors approved the revised capital expenditure plan for the next fiscal year, "
    "subject to a review of the maintenance backlog.",
    "Under clause 14.2 the supplier shall indemnify the purchaser against all claims arising from defects "
    "in materials or workmanship.",
    "Photosynthesis converts light energy into chemical energy that is stored in glucose and releases "
    "oxygen as a by-product.",
    "The patient presented with intermittent chest pain radiating to the left arm, and an "
    "electrocardiogram showed no acute changes.",
    "Consumers in a group divide the partitions of a topic among themselves and commit offsets only after "
    "processing each record.",
    "Groundwater levels in the northern basin declined by an average of 40 centimetres per year between "
    "2009 and 2019.",
    "The tribunal found that the dismissal was procedurally unfair because the employee had not been "
    "given an opportunity to respond.",
    "Revenue increased by 12 percent year over year, driven mainly by subscription growth in the European "
    "market.",
    "All personnel must complete the annual safety training before operating the hydraulic press or the "
    "overhead crane.",
    "The committee recommends that the municipality adopt a phased approach to replacing lead service "
    "lines in older districts.",
    "In the second experiment the samples were incubated at 37 degrees Celsius for 48 hours before the "
    "optical density was measured.",
    "The appellant contends that the lower court erred in admitting hearsay evidence without a proper "
    "foundation.",
    "Net interest margin narrowed as deposit costs rose faster than yields on the loan portfolio during "
    "the third quarter.",
    "The bridge inspection identified corrosion on several steel girders and recommended repainting "
    "within two years.",
    "Students who attended the tutoring sessions scored on average eleven points higher on the final "
    "examination.",
    "The software update fixes a race condition in the scheduler that could cause tasks to run twice "
    "after a restart.",
    "Each tenant is responsible for keeping the premises in good repair, fair wear and tear excepted.",
    "The survey was distributed to 2,400 households, of which 61 percent returned a completed "
    "questionnaire.",
    "Wind turbines in the offshore array are connected by 33 kilovolt cables to a central substation on "
    "a fixed platform.",
    "The auditor noted that several invoices had been approved by the same person who had requested the "
    "purchase.",
]


def prose(chars: int, rng: random.Random) -> str:
    text = ""
    while len(text) < chars:
        text += rng.choice(SENTENCES) + " "
    return text[:chars].rstrip()


def bench_embedder(embedder: OnnxEmbedder, texts: list[str], repeats: int) -> tuple[np.ndarray, float]:
    embedder.embed(texts[:8])  # warm-up (allocations, thread pool)
    best = float("inf")
    vectors = np.zeros((0, embedder.dim), dtype=np.float32)
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = embedder.embed(texts)
        best = min(best, time.perf_counter() - started)
    return vectors, len(texts) / best


def make_pdf(path: Path, pages: int, rng: random.Random) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    pdf.set_auto_page_break(False)
    for _ in range(pages):
        pdf.add_page()
        words = prose(3000, rng).split()
        line: list[str] = []
        y = 15.0
        for word in words:  # wrap by hand: pdf.text() is much faster than multi_cell()
            if sum(len(w) + 1 for w in line) + len(word) > 95:
                pdf.text(10, y, " ".join(line))
                y += 4.5
                line = []
            line.append(word)
        pdf.text(10, y, " ".join(line))
    pdf.output(str(path))


def rss_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--chars", type=int, default=1000, help="chunk size (1320 ~ 256 tokens)")
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(20240601)

    started = time.perf_counter()
    files = model_setup.build()
    setup_s = time.perf_counter() - started

    texts = [prose(args.chars, rng) for _ in range(args.chunks)]
    int8 = OnnxEmbedder(files.int8, threads=args.threads)
    fp32 = OnnxEmbedder(files.fp32, threads=args.threads)
    tokens = np.mean([len(e.ids) for e in int8._tokenizer.encode_batch(texts[:32])])

    print(f"## embedding bench ({args.chunks} chunks x {args.chars} chars, ~{tokens:.0f} tokens, "
          f"threads={args.threads}, load avg {os.getloadavg()[0]:.1f})")
    print(f"- model_setup.build(): {setup_s:.1f}s ({'cached' if setup_s < 2 else 'built'})")
    v32, cps32 = bench_embedder(fp32, texts, args.repeats)
    v8, cps8 = bench_embedder(int8, texts, args.repeats)
    cos = (v8 * v32).sum(axis=1)
    print(f"- int8: {cps8:.1f} chunks/s")
    print(f"- fp32: {cps32:.1f} chunks/s (int8 speed-up x{cps8 / cps32:.2f})")
    print(f"- cosine int8 vs fp32: mean {cos.mean():.4f}, min {cos.min():.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        pdf_path = Path(tmp) / "bench.pdf"
        started = time.perf_counter()
        make_pdf(pdf_path, args.pages, rng)
        gen_s = time.perf_counter() - started
        size_mb = pdf_path.stat().st_size / 2**20

        rss_before = rss_mb()
        started = time.perf_counter()
        chars = sum(len(p.text) for p in iter_pdf_pages(lambda: pdf_path))
        extract_s = time.perf_counter() - started
        started = time.perf_counter()
        n_chunks = sum(1 for _ in chunk_pages(iter_pdf_pages(lambda: open(pdf_path, "rb"))))  # noqa: SIM115
        chunk_s = time.perf_counter() - started
        print(f"## pdf bench ({args.pages} pages, {size_mb:.1f} MB, {chars / args.pages:.0f} chars/page, "
              f"generated in {gen_s:.1f}s)")
        print(f"- pypdfium2 extraction (path): {args.pages / extract_s:.0f} pages/s")
        print(f"- extraction + chunking (file object): {args.pages / chunk_s:.0f} pages/s, {n_chunks} chunks")
        print(f"- RSS {rss_before:.0f} MB -> {rss_mb():.0f} MB")
        print(f"- end-to-end estimate at int8 speed: {cps8 / (n_chunks / args.pages):.1f} pages/s")


if __name__ == "__main__":
    main()
