"""Figure 3: the vector step against the bare model, int8 accuracy, and memory over page count.

For each size: the chunks of a many-page, little-text PDF are embedded by the bare int8 model
in this process; then the six services (fresh processes) ingest the same PDF, and the vector
step's rate comes from its own events (SecurityRecorded -> VectorsIndexed).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import documents, embed
from bench.env import Run
from bench.flow import ingest_sync
from bench.report import Section
from bench.services import ALL, Services
from services.core.chunkstore import ChunkStore
from services.core.events import SECURITY_RECORDED, VECTORS_INDEXED, VECTORS_PROGRESSED

PAGES = [5000, 20000]
QUICK_PAGES = [200, 800]
CHARS_PER_PAGE = 200


@dataclass
class Measured:
    pages: int
    chunks: int
    bare: float  # chunks/s
    service: float  # chunks/s
    steady: float  # chunks/s after the first batch (from VectorsProgressed)
    first_batch: float  # s from SecurityRecorded to the first VectorsProgressed
    end_to_end: float  # s, submit -> DocumentCompleted
    peak_rss: dict[str, float]
    cosine: tuple[float, float] | None  # mean, min


def measure(r: Run, pages: int, with_cosine: bool) -> Measured:
    path = documents.sparse_pdf(pages, CHARS_PER_PAGE)
    texts = embed.chunk_texts(path)
    v8, bare = embed.bare(texts, "int8")
    cos = None
    if with_cosine:
        c = embed.cosine(v8, embed.bare(texts, "fp32")[0])
        cos = (float(c.mean()), float(c.min()))
    with Services(ALL, r.env.service_env()) as running:
        ing = ingest_sync([path], timeout=300 + len(texts) / 2, running=running)
        peaks = running.peak_rss_mb()
    (doc,) = ing.done
    ChunkStore(r.env.chunk_store).delete(doc)
    indexed = ing.tap.first(doc, VECTORS_INDEXED)
    assert indexed is not None and indexed.event.payload["chunk_count"] == len(texts), "chunk counts differ"
    service = len(texts) / ing.between(doc, SECURITY_RECORDED, VECTORS_INDEXED)
    first = ing.tap.first(doc, VECTORS_PROGRESSED)
    assert first is not None
    first_at = first.event.occurred_at.timestamp()
    steady = (len(texts) - first.event.payload["chunks_done"]) / (ing.occurred(doc, VECTORS_INDEXED) - first_at)
    first_batch = first_at - ing.occurred(doc, SECURITY_RECORDED)
    m = Measured(pages, len(texts), bare, service, steady, first_batch, ing.latency(doc), peaks, cos)
    print(f"  vector {pages} pages, {len(texts)} chunks: bare {bare:.1f} chunks/s, step {service:.1f} chunks/s "
          f"(x{service / bare:.2f}; after the first batch {steady:.1f}, x{steady / bare:.2f}; first batch "
          f"{first_batch:.2f} s), vector peak RSS {peaks['vector']:.0f} MB"
          + (f", cosine mean {cos[0]:.4f} min {cos[1]:.4f}" if cos else ""), flush=True)
    return m


def run(r: Run) -> Section:
    sizes = r.sizes_for("vector", PAGES, QUICK_PAGES)
    results = [measure(r, pages, with_cosine=(i == 0)) for i, pages in enumerate(sizes)]
    s = Section("vector", r.command, r.quick,
                ", ".join(f"{p:,} pages" for p in sizes) + f" of ~{CHARS_PER_PAGE} characters (fpdf2, cached)")
    s.table(
        ["PDF", "chunks", "bare int8 chunks/s", "vector step chunks/s", "ratio",
         "after the first batch: chunks/s (ratio)", "first batch s", "submit -> completed s"],
        [[f"{m.pages:,} pages", f"{m.chunks:,}", f"{m.bare:.1f}", f"{m.service:.1f}", f"{m.service / m.bare:.2f}",
          f"{m.steady:.1f} ({m.steady / m.bare:.2f})", f"{m.first_batch:.2f}", f"{m.end_to_end:.1f}"]
         for m in results],
    )
    s.table(
        ["PDF", *(f"{n} peak RSS MB" for n in ALL)],
        [[f"{m.pages:,} pages", *(f"{m.peak_rss[n]:.0f}" for n in ALL)] for m in results],
    )
    worst = min(m.service / m.bare for m in results)
    s.verdicts.append(f"Vector step / bare model: lowest ratio {worst:.2f} (goal >= 0.9): "
                      f"{'met' if worst >= 0.9 else 'NOT met'}")
    small, big = results[0], results[-1]
    growth = big.peak_rss["vector"] - small.peak_rss["vector"]
    s.verdicts.append(f"vector peak RSS {small.pages:,} -> {big.pages:,} pages: {growth:+.1f} MB (goal <= 16 MB): "
                      f"{'met' if growth <= 16 else 'NOT met'}")
    if small.cosine:
        s.verdicts.append(f"Cosine int8 vs fp32 over the {small.chunks:,} chunks of the {small.pages:,}-page PDF: "
                          f"mean {small.cosine[0]:.4f}, min {small.cosine[1]:.4f}")
    s.notes += [
        "Bare model: `load_embedder('int8').embed(chunks)` in the harness process, same chunking, same "
        "thread count as the service (all cores), after an 8-chunk warm-up, before the services start.",
        "Vector step: `chunk_count / (VectorsIndexed.occurred_at - SecurityRecorded.occurred_at)`: extraction, "
        "chunking, embedding, Milvus upserts and one VectorsProgressed checkpoint per batch. `After the first "
        "batch`: from the first VectorsProgressed on (the first batch carries the fresh process's one-off costs).",
        "The index lives in the stack's milvus-lite server, not in the vector service's RSS.",
    ]
    return s
