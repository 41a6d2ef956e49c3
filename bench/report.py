"""Figures as sections of `docs/benchmarks.md`.

Each figure's latest result is kept in `.stack/bench/results/{full,quick}/<key>.json`, and the
document is rebuilt from all of them, so `--only upload` refreshes one section and keeps the
others (each section names the command, date, machine and load it was measured with). A quick
result shows only where no full one exists: a smoke run never hides measured figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procfs
from bench.env import BENCH_DIR
from services.core.config import REPO_ROOT

RESULTS_DIR = BENCH_DIR / "results"
DOC = REPO_ROOT / "docs" / "benchmarks.md"

# key -> (title, what is measured and the goal)
FIGURES: dict[str, tuple[str, str]] = {
    "codec": (
        "1. Codec",
        "Avro encode + decode of one typical event (ChunkStored), events per second on one core, "
        "next to bare fastavro (from `bench/codec_bench.py`).",
    ),
    "upload": (
        "2. Upload + verify",
        "Uploader work time (UploadStarted -> UploadCompleted) and verifier work time "
        "(UploadCompleted -> IntegrityVerified), from the events' `occurred_at`, as MB/s and as a ratio "
        "to a plain copy of the same file to the same store in the same run (the folder: 5 MiB-chunk read + "
        "sha256 + write + fsync; the object store: boto3's `upload_file`), on both chunk stores. Only the "
        "uploader and verifier run (the saga stops after IntegrityVerified). "
        "Peak RSS (VmHWM) of each, a fresh process per size. **Goals: ratio >= 0.7; peak RSS at the "
        "largest size <= peak at the smallest + 16 MB.**",
    ),
    "vector": (
        "3. Vector step",
        "Chunks/s of the vector step (VectorsIndexed `chunk_count` / (SecurityRecorded -> VectorsIndexed)) "
        "as a ratio to the bare int8 model (`load_embedder('int8').embed`, same chunks, same threads) measured "
        "in the same run; cosine int8 vs the fp32 ONNX reference on those chunks; peak RSS of the services "
        "(six fresh processes per size) for PDFs with many pages of little text. **Goals: ratio >= 0.9; "
        "vector peak RSS growth from the smaller to the larger PDF <= 16 MB.**",
    ),
    "large": (
        "4. Large document end to end",
        "A mixed PDF (prose pages plus incompressible scanned-image pages) from submit to DocumentCompleted "
        "(on the completions topic), six service processes, as a ratio to the bare int8 embedding time of its "
        "chunks measured in the same run. **Goal: <= 1.15.**",
    ),
    "small": (
        "5. Small documents",
        "Sagas per second and latency (submit -> DocumentCompleted on the completions topic) for one-chunk "
        "text documents through the six service processes (all at once, then at a steady rate), next to the "
        "same steps run in one process as plain calls of the runtime's `process()` (no Kafka), with the real "
        "PostgreSQL event store and with an in-memory one. CPU seconds per saga show where the bound is.",
    ),
    "stack": (
        "6. Stack servers",
        "Memory of the stack's servers (Kafka, Neo4j, PostgreSQL, milvus-lite) for reference: shared with other users "
        "of the machine, so this is their state at the time of the run, not an idle baseline.",
    ),
    "embedding": (
        "7. Embeddings on every CPU",
        "Each int8 recipe of `model_setup` against the fp32 graph in one run: chunks/s (the service's threads, "
        "one text per run), cosine to the fp32 vectors over >= 1,000 chunks of four kinds, recall@1, recall@5 and "
        "MRR on the project's retrieval set (with the numpy float64 reference), and the same recipe on an "
        "emulated CPU without AVX-512 and VNNI against this CPU's vectors (`bench/embedding.py`). **Goals: "
        "mean cosine >= 0.995, min >= 0.98; int8 recall@5 within 1 point of fp32; the same vectors on both "
        "kinds of CPU; the default is the fastest recipe that meets them.**",
    ),
    "scans": (
        "8. Text extraction on scanned pages",
        "Peak RSS of text extraction through the chunk store's reader for mixed PDFs of about 30 MiB, 300 MiB "
        "and 1 GiB whose scans are a quarter of the pages, with the reader's byte budget and, for comparison, "
        "reopening by page count only (what it did before). **Goal: peak RSS growth from the smallest to the "
        "largest file <= 16 MB (G7).**",
    ),
    "fanout": (
        "9. One large document, many vector workers",
        "The ~300 MB mixed PDF of section 4 with one vector process pinned to one core (`taskset`, so one model "
        "thread) and with two pinned to one core each, fresh services each time: the vector phase "
        "(SecurityRecorded -> VectorsIndexed, from `occurred_at`) and submit -> DocumentCompleted, against "
        "the bare one-thread embedding time of the same chunks in this process (pinned to one core) divided "
        "by the workers. **Goals: 2 workers >= 1.8x faster than 1 in the vector phase; end to end <= 1.1x "
        "bare embedding / workers.**",
    ),
    "ocr": (
        "10. OCR of scanned pages",
        "Character error rate of Tesseract (tesserocr, Debian's language data, `deu+eng`) on passages of English "
        "and German prose scanned at 200 and 300 dpi, clean, noisy and turned; pages per second on one core; what a "
        "picture (a noise page) costs; a scanned PDF end to end with one and two pinned vector workers. "
        "**Goal: clean 300 dpi text <= 2 % character error rate.**",
    ),
}


@dataclass
class Section:
    key: str
    command: str
    quick: bool
    sizes: str
    tables: list[list[list[str]]] = field(default_factory=list)  # each: header row, then rows
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    machine: dict[str, str] = field(default_factory=procfs.machine)
    duration_s: float = 0.0

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.tables.append([header, *rows])

    def markdown(self) -> str:
        title, about = FIGURES[self.key]
        m = self.machine
        out = [f"## {title}", "", about, ""]
        if self.quick:
            out += ["> **Quick mode** (`--quick`, small sizes): a smoke test of the harness, not the figures.", ""]
        load, cores = float(m["load"].split()[0]), int(m["nproc"])
        if load > cores / 2:
            out += [f"> **Busy machine**: load average {load:.1f} on {cores} cores when this started; other work "
                    "shared the CPUs, so rates are low and ratios noisy. Re-run on a quiet machine.", ""]
        out += [
            f"- Command: `{self.command}`",
            f"- Date: {self.date}; took {self.duration_s:.0f} s",
            f"- Machine: {m['nproc']} x {m['cpu']}, {m['memory']}; load average at start {m['load']}",
            f"- Sizes: {self.sizes}",
            "",
        ]
        for table in self.tables:
            out += [_row(table[0]), _row(["---"] + ["---:"] * (len(table[0]) - 1)), *map(_row, table[1:]), ""]
        out += [f"**{v}**  " for v in self.verdicts]
        if self.verdicts:
            out.append("")
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def save(self) -> None:
        folder = RESULTS_DIR / ("quick" if self.quick else "full")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.key}.json").write_text(json.dumps(asdict(self), indent=1))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def load(key: str) -> Section | None:
    """The figure's latest full result, else its latest quick one."""
    for mode in ("full", "quick"):
        path = RESULTS_DIR / mode / f"{key}.json"
        if path.exists():
            return Section(**json.loads(path.read_text()))
    return None


HEADER = """# Benchmarks

Written by `make bench` (`.venv/bin/python -m bench.run`); every figure below names the exact
command, date, machine and load average it was measured with. `--quick` runs small sizes (a
smoke test of the harness, shown here only for figures never measured at full size); `--only
codec,upload,vector,large,small,stack,embedding` runs some figures and keeps the others' last results.
The goals come from DESIGN.md section 6.

Ratios are always taken between two measurements of the **same run**, on the same input, so a
busy machine slows both sides; absolute rates vary with the machine and its load.
MB = 2^20 bytes. Service processes are started fresh by the harness with their own topic prefix,
PostgreSQL database and Milvus collection (created and dropped by the run), chunk store (under
`.stack/bench/`, git-ignored; generated input files are kept there across runs); peak RSS is
each process's `VmHWM` from `/proc/<pid>/status`, read from outside just before it is stopped.
"""


def write(path: Path = DOC) -> None:
    """Rebuilds the document: each figure's saved result, else the section the document already has
    (results live in the git-ignored .stack/, so a fresh machine has only what it measured)."""
    written = _sections(path.read_text()) if path.exists() else {}
    parts = [HEADER]
    for key, (title, about) in FIGURES.items():
        section = load(key)
        fallback = written.get(f"## {title}", f"## {title}\n\n{about}\n\n_Not measured yet._\n")
        parts.append(section.markdown() if section else fallback)
    path.write_text("\n".join(parts))


def _sections(doc: str) -> dict[str, str]:
    """The document's sections by their heading line."""
    chunks = ("\n" + doc).split("\n## ")[1:]
    return {"## " + c.split("\n", 1)[0]: "## " + c.rstrip("\n") + "\n" for c in chunks}
