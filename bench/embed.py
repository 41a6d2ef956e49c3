"""The bare model over a document's chunks: the yardstick of the vector step and end to end."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.embedding_bench import bench_embedder
from bench.env import MODEL_DIR
from services.core.config import Settings
from services.vector.embedding import OnnxEmbedder, load_embedder
from services.vector.items import plan_items
from services.vector.text import chunk_pages, iter_pdf_pages, page_count


def chunk_texts(path: Path, settings: Settings | None = None) -> list[str]:
    """The chunks the vector step makes of this PDF (same extraction, same chunk settings, and
    chunking restarts at each work item's first page)."""
    s = settings or Settings()
    return [c.text for r in plan_items(page_count(lambda: path), s.vector_item_pages)
            for c in chunk_pages(iter_pdf_pages(lambda: path, pages=r), size=s.text_chunk_chars,
                                 overlap=s.text_chunk_overlap)]


def bare(texts: list[str], kind: str = "int8", threads: int | None = None) -> tuple[npt.NDArray[np.float32], float]:
    """Vectors and chunks/s of `load_embedder(kind).embed` over `texts` (threads as the service:
    one per CPU this process may use, unless given)."""
    embedder = load_embedder(kind, threads=threads, model_dir=MODEL_DIR)  # type: ignore[arg-type]
    assert isinstance(embedder, OnnxEmbedder)
    vectors, rate = bench_embedder(embedder, texts, repeats=1)  # warm-up on 8 texts, then one timed pass
    del embedder
    gc.collect()  # the session's memory and threads are released before the services start
    return vectors, rate


def cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise cosine of L2-normalised vectors."""
    return np.asarray((a * b).sum(axis=1), dtype=np.float32)
