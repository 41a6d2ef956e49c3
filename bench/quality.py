"""The embedding model judged as its users use it: retrieval, and agreement with the fp32 graph.

* `retrieval_set()`: passages and questions written for this project (`bench/retrieval/`,
  English and German; clusters of passages on one subject with different facts, so the right
  passage has near neighbours; tables, LaTeX and code among them), each question labelled with
  the passage that answers it.
* `corpus()`: chunks of four kinds, cut by the vector step's own chunker: English prose (the
  retrieval passages and the docstrings of Python's standard library), code and LaTeX (standard
  library sources and the retrieval set's LaTeX and code passages), tables of numbers (the
  retrieval set's tables and generated report tables), German prose (the German passages).
  Everything comes from the repo or the Python that runs it: no downloads, the same chunks on
  every machine with the same Python.
* `retrieve()`, `retrieval_scores()`: recall@k and MRR of an embedder on the retrieval set.
* `embed_emulated()`: vectors computed on an emulated CPU without AVX-512 or VNNI (qemu).
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.vector.embedding import Embedder
from services.vector.text import Page, chunk_pages

DATA = Path(__file__).resolve().parent / "retrieval"
KINDS = ("prose-en", "code-latex", "tables", "prose-de")
_CODE_DOMAINS = {"mathematics", "software", "it_betrieb"}  # LaTeX markup, commands, config lines
# Modules whose docstrings (English prose) and sources (code) make up part of the corpus.
_DOC_MODULES = ("argparse", "asyncio.events", "asyncio.streams", "collections", "configparser", "csv", "datetime",
                "decimal", "email.message", "fractions", "functools", "http.client", "http.cookiejar", "inspect",
                "ipaddress", "json", "logging", "pathlib", "shutil", "sqlite3", "ssl", "statistics", "subprocess",
                "tarfile", "threading", "typing", "unittest.case", "urllib.request", "zipfile")
_CODE_MODULES = ("argparse", "csv", "decimal", "json.decoder", "logging", "pathlib", "subprocess", "tarfile")


@dataclass(frozen=True)
class Passage:
    id: str
    lang: str
    domain: str
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    lang: str
    text: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class RetrievalSet:
    passages: list[Passage]
    queries: list[Query]


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def retrieval_set() -> RetrievalSet:
    passages = [Passage(str(p["id"]), str(p["lang"]), str(p["domain"]), str(p["text"]))
                for path in sorted(DATA.glob("passages_*.jsonl")) for p in _jsonl(path)]
    queries = [Query(str(q["id"]), str(q["lang"]), str(q["text"]), tuple(q["answers"]))  # type: ignore[arg-type]
               for path in sorted(DATA.glob("queries_*.jsonl")) for q in _jsonl(path)]
    known = {p.id for p in passages}
    unknown = [q.id for q in queries if not set(q.answers) <= known]
    if unknown:
        raise ValueError(f"queries answered by unknown passages: {unknown}")
    return RetrievalSet(passages, queries)


def _kind(p: Passage) -> str:
    if p.text.count("|") >= 8:
        return "tables"
    if p.domain in _CODE_DOMAINS:
        return "code-latex"
    return "prose-de" if p.lang == "de" else "prose-en"


def _chunks(texts: list[str]) -> list[str]:
    """Cut texts as the vector step cuts a document (1000 characters, 100 overlap)."""
    pages = [Page(number=i + 1, text=t, has_text=True) for i, t in enumerate(texts)]
    return [c.text for c in chunk_pages(pages)]


def _docstrings() -> list[str]:
    out = []
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200 and getattr(obj, "__module__", None) == module.__name__:
                out.append(" ".join(doc.split()))
    return out


def _sources() -> list[str]:
    return [inspect.getsource(importlib.import_module(name)) for name in _CODE_MODULES]


def _report_tables(count: int, rng: random.Random) -> list[str]:
    """Tables as text extraction yields them: a caption, a header row, rows of figures."""
    items = ["Revenue", "Operating costs", "EBIT", "Staff (FTE)", "Capex", "Tax", "Net result", "Umsatz",
             "Personalaufwand", "Abschreibungen", "Water abstracted (m3)", "Leakage (%)", "Load (kN)"]
    out = []
    for t in range(count):
        cols = rng.randint(3, 7)
        year = rng.randint(1995, 2026)
        rows = [f"Table {t + 1}: {rng.choice(['quarterly figures', 'Kennzahlen', 'inspection readings'])}, "
                f"{rng.choice(['region', 'Bezirk', 'site'])} {rng.choice('ABCDEFGH')}{rng.randint(1, 99)}",
                " | ".join(["Item", *(f"Q{i % 4 + 1} {year + i // 4}" for i in range(cols))])]
        while sum(map(len, rows)) < 1100:
            scale = rng.choice([1, 100, 10_000, 1_000_000])
            rows.append(" | ".join([rng.choice(items), *(f"{rng.uniform(-0.2, 1) * scale:,.{rng.randint(0, 2)}f}"
                                                         for _ in range(cols))]))
        out.append(" ".join(rows))
    return out


def corpus(per_kind: int | None = None, seed: int = 13) -> dict[str, list[str]]:
    """Chunks by kind (see the module's doc); `per_kind` takes a seeded sample of each kind."""
    rng = random.Random(seed)
    passages = retrieval_set().passages
    by_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    for p in passages:
        by_kind[_kind(p)].append(p.text)
    kinds = {
        "prose-en": _chunks(by_kind["prose-en"]) + _chunks(_docstrings()),
        "code-latex": _chunks(by_kind["code-latex"]) + _chunks(_sources())[:300],
        "tables": _chunks(by_kind["tables"]) + _chunks(_report_tables(200, rng)),
        "prose-de": _chunks(by_kind["prose-de"]),
    }
    if per_kind is not None:
        kinds = {k: rng.sample(v, min(per_kind, len(v))) for k, v in kinds.items()}
    return kinds


@dataclass(frozen=True)
class RetrievalScores:
    recall_at_1: float
    recall_at_5: float
    mrr: float
    misses_at_5: tuple[str, ...]  # queries whose answer is not in the top five


def retrieve(embedder: Embedder, rs: RetrievalSet) -> RetrievalScores:
    """Embeds the set's questions and passages and scores the ranking."""
    return retrieval_scores(rs, embedder.embed([q.text for q in rs.queries]),
                            embedder.embed([p.text for p in rs.passages]))


def retrieval_scores(rs: RetrievalSet, queries: npt.NDArray[np.float32],
                     passages: npt.NDArray[np.float32]) -> RetrievalScores:
    """Cosine ranking (vectors are unit length) of every passage for every query."""
    ranking = np.argsort(-(queries @ passages.T), axis=1, kind="stable")
    ids = np.array([p.id for p in rs.passages])
    ranks = []
    for q, order in zip(rs.queries, ranking, strict=True):
        hits = np.flatnonzero(np.isin(ids[order], q.answers))
        ranks.append(int(hits[0]) + 1)
    r = np.array(ranks)
    misses = tuple(q.id for q, rank in zip(rs.queries, ranks, strict=True) if rank > 5)
    return RetrievalScores(float((r <= 1).mean()), float((r <= 5).mean()), float((1 / r).mean()), misses)


# qemu's AMD EPYC-Milan: AVX2 and FMA, no AVX-512, no VNNI, so onnxruntime runs its AVX2 u8 x s8
# kernels (int16 pair sums that saturate with 8-bit weights) whatever CPU runs the emulator.
EMULATED_CPU = "EPYC-Milan"
_EMBED = """
import sys, numpy as np
from services.vector.embedding import OnnxEmbedder
texts = [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8")]
np.save(sys.argv[3], OnnxEmbedder(sys.argv[1], threads=1).embed(texts))
"""


def embed_emulated(model: Path, texts: list[str], cpu: str = EMULATED_CPU) -> npt.NDArray[np.float32]:
    """`OnnxEmbedder(model, threads=1).embed(texts)` run by Debian's qemu-user emulating `cpu`.

    About 25 s a 1000-character chunk. One thread: qemu 7.2 emulating two onnxruntime threads
    returned wrong vectors after a dozen runs (measured), one thread matched the native ones.
    """
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-x86_64 not found: `make test` and `make bench` install Debian's qemu-user")
    with tempfile.TemporaryDirectory() as tmp:
        lines, out = Path(tmp) / "texts.txt", Path(tmp) / "vectors.npy"
        lines.write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")
        run = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", _EMBED, str(model), str(lines), str(out)],
                             capture_output=True, text=True, timeout=120 + 240 * len(texts))
        if run.returncode != 0:
            raise RuntimeError(f"emulated embedding failed: {run.stderr[-2000:]}")
        return np.asarray(np.load(out), dtype=np.float32)
