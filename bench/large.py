"""Figure 4: a large mixed PDF end to end, against the bare embedding time of its chunks.

The bare int8 model embeds the PDF's chunks in this process first; then the six services
(fresh processes, warmed up by one small document) ingest the PDF from submit to
DocumentCompleted on the completions topic.
"""

from __future__ import annotations

from bench import documents, embed
from bench.env import Run
from bench.flow import ingest_sync
from bench.report import Section
from bench.services import ALL, Services
from services.core.chunkstore import ChunkStore

TEXT_PAGES, SCAN_PAGES, CHARS_PER_PAGE = 900, 110, 4400  # ~1,000 pages, ~4 M characters, ~300 MB
QUICK = (40, 4, 4400)


def run(r: Run) -> Section:
    text_pages, scan_pages, chars = QUICK if r.quick else (TEXT_PAGES, SCAN_PAGES, CHARS_PER_PAGE)
    path = documents.mixed_pdf(text_pages, scan_pages, chars)
    mb = path.stat().st_size / 2**20
    texts = embed.chunk_texts(path)
    _, rate = embed.bare(texts, "int8")
    bare_s = len(texts) / rate
    print(f"  large: {mb:.0f} MB, {len(texts):,} chunks, bare embedding {bare_s:.1f} s", flush=True)
    chunks = ChunkStore(r.env.chunk_store)
    with Services(ALL, r.env.service_env()) as running:
        warm = ingest_sync([documents.small_text(r.env.run_dir, 0)], 180, running=running)
        ing = ingest_sync([path], timeout=600 + bare_s * 3, running=running)
        peaks = running.peak_rss_mb()
    for doc in [*warm.done, *ing.done]:
        chunks.delete(doc)
    (doc,) = ing.done
    total = ing.latency(doc)
    print(f"  large: submit -> DocumentCompleted {total:.1f} s (x{total / bare_s:.2f} of bare embedding)", flush=True)

    s = Section("large", r.command, r.quick,
                f"{text_pages} text pages of ~{chars:,} characters + {scan_pages} scanned-image pages: "
                f"{mb:.0f} MB, {sum(map(len, texts)):,} characters in {len(texts):,} chunks")
    s.table(["submit -> DocumentCompleted s", "bare int8 embedding s", "ratio", "vector step chunks/s",
             "bare chunks/s"],
            [[f"{total:.1f}", f"{bare_s:.1f}", f"{total / bare_s:.2f}",
              f"{len(texts) / ing.between(doc, 'SecurityRecorded', 'VectorsIndexed'):.1f}", f"{rate:.1f}"]])
    s.table(["stage", "seconds", "share"],
            [[stage, f"{t:.2f}", f"{t / total:.1%}"] for stage, t in ing.stages(doc).items()])
    s.table(["service", "peak RSS MB"], [[n, f"{peaks[n]:.0f}"] for n in ALL])
    ok = total / bare_s <= 1.15
    s.verdicts.append(f"End to end / bare embedding: {total / bare_s:.2f} (goal <= 1.15): {'met' if ok else 'NOT met'}")
    s.notes += [
        "Stages come from the events' `occurred_at` (one clock, millisecond precision); the chunks counted "
        "by the harness equal the VectorsIndexed `chunk_count`.",
        "The services first complete one small document (consumers joined, connections open), as a running "
        "deployment would be.",
    ]
    return s
