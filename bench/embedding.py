"""Figure 7: the int8 recipes against fp32 by speed, agreement and retrieval, on two kinds of CPU.

Every quantisation recipe of `model_setup` is built into a scratch folder from the same fp32
graph. Each graph embeds the corpus of `bench/quality.py` (>= 1,000 chunks of four kinds) once,
after a warm-up, with the service's thread count: chunks/s and cosine to the fp32 vectors. Each
then embeds the retrieval set, as does the numpy reference (the sentence-transformers
computation in float64): recall@1, recall@5, MRR. Last, every int8 recipe runs on an emulated
CPU without AVX-512 and VNNI (qemu, one thread) on the chunks where saturation hurt most.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench import quality
from bench.env import MODEL_DIR, Run
from bench.report import Section
from services.vector import model_setup
from services.vector.embedding import Embedder, NumpyReferenceEmbedder, OnnxEmbedder, runtime_description

RECALL_POINTS = 0.01  # int8 recall@5 may trail fp32's by at most one point
EQUAL = 0.999  # emulated vs native cosine at or above this: the same vectors


def _timed(embedder: Embedder, texts: list[str]) -> tuple[npt.NDArray[np.float32], float]:
    embedder.embed(texts[:4])  # warm-up: allocations, thread pool
    started = time.perf_counter()
    vectors = embedder.embed(texts)
    return vectors, len(texts) / (time.perf_counter() - started)


def run(r: Run) -> Section:
    files = model_setup.build(MODEL_DIR)
    corpus = quality.corpus(per_kind=30 if r.quick else None)
    texts = [t for kind in quality.KINDS for t in corpus[kind]]
    kinds = np.array([kind for kind in quality.KINDS for _ in corpus[kind]])
    emulated_texts = [" ".join(corpus[kind][0].split()) for kind in ("tables", "prose-de")]
    rs = quality.retrieval_set()
    sizes = (f"{len(texts):,} chunks ({', '.join(f'{k} {len(v)}' for k, v in corpus.items())}); retrieval set "
             f"{len(rs.passages)} passages, {len(rs.queries)} questions; {len(emulated_texts)} chunks emulated")
    s = Section("embedding", r.command, r.quick, sizes)
    print(f"  {runtime_description()}", flush=True)

    fp32 = OnnxEmbedder(files.fp32)
    ref, fp32_rate = _timed(fp32, texts)
    emulated_ref = OnnxEmbedder(files.fp32, threads=1).embed(emulated_texts)
    retrieval = {"fp32": quality.retrieve(fp32, rs)}
    rows, verdict_rows = [["fp32", f"{fp32_rate:.1f}", "1", *["-"] * (3 + len(quality.KINDS))]], {}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(files.tokenizer, Path(tmp) / files.tokenizer.name)  # the embedder looks beside the graph
        for recipe in model_setup.QUANTIZATIONS.values():
            path = Path(tmp) / f"{recipe.name}.onnx"
            model_setup.quantize_int8(files.fp32, path, recipe)
            embedder = OnnxEmbedder(path)
            vectors, rate = _timed(embedder, texts)
            cos = (vectors * ref).sum(axis=1)
            retrieval[recipe.name] = quality.retrieve(embedder, rs)
            per_kind = [f"{cos[kinds == k].mean():.4f} / {cos[kinds == k].min():.4f}" for k in quality.KINDS]
            print(f"  {recipe.name}: {rate:.1f} chunks/s, cosine {cos.mean():.4f} / {cos.min():.4f}; emulating ...",
                  flush=True)
            native = OnnxEmbedder(path, threads=1).embed(emulated_texts)
            emulated = quality.embed_emulated(path, emulated_texts)
            same = float((emulated * native).sum(axis=1).min())
            to_fp32 = float((emulated * emulated_ref).sum(axis=1).min())
            name = recipe.name + (" (default)" if recipe == model_setup.DEFAULT_QUANTIZATION else "")
            rows.append([name, f"{rate:.1f}", f"{rate / fp32_rate:.2f}", f"{cos.mean():.4f}", f"{cos.min():.4f}",
                         *per_kind, f"{same:.4f} ({to_fp32:.4f})"])
            verdict_rows[recipe.name] = (rate, float(cos.mean()), float(cos.min()), same)

    s.table(["graph", "chunks/s", "x fp32", "cosine to fp32: mean", "min",
             *(f"{k}: mean / min" for k in quality.KINDS), "emulated vs native: min cosine (to fp32)"], rows)
    if not r.quick:
        retrieval["numpy reference"] = quality.retrieve(NumpyReferenceEmbedder(), rs)
    s.table(["graph", "recall@1", "recall@5", "MRR", "questions missed at 5"],
            [[name, f"{v.recall_at_1:.3f}", f"{v.recall_at_5:.3f}", f"{v.mrr:.4f}", str(len(v.misses_at_5))]
             for name, v in retrieval.items()])

    qualifies = {
        name: rate for name, (rate, mean, low, same) in verdict_rows.items()
        if mean >= 0.995 and low >= 0.98 and same >= EQUAL
        and retrieval[name].recall_at_5 >= retrieval["fp32"].recall_at_5 - RECALL_POINTS
    }
    default = model_setup.DEFAULT_QUANTIZATION.name
    rate, mean, low, same = verdict_rows[default]
    s.verdicts += [
        f"Default {default}: cosine to fp32 mean {mean:.4f}, min {low:.4f} (goal >= 0.995 / >= 0.98): "
        + ("met" if mean >= 0.995 and low >= 0.98 else "NOT met"),
        f"Default {default}: recall@5 {retrieval[default].recall_at_5:.3f} against fp32 "
        f"{retrieval['fp32'].recall_at_5:.3f} (goal: within 1 point): "
        + ("met" if retrieval[default].recall_at_5 >= retrieval["fp32"].recall_at_5 - RECALL_POINTS else "NOT met"),
        f"Default {default} on the emulated {quality.EMULATED_CPU}: min cosine {same:.4f} to this CPU's vectors "
        f"(same vectors: >= {EQUAL}): " + ("met" if same >= EQUAL else "NOT met"),
        "Recipes meeting all three: " + (", ".join(f"{n} ({q:.1f} chunks/s)" for n, q in
                                                   sorted(qualifies.items(), key=lambda i: -i[1])) or "none"),
    ]
    s.notes += [
        f"This CPU: {runtime_description()}.",
        f"Emulated CPU: `qemu-x86_64 -cpu {quality.EMULATED_CPU}` (Debian's qemu-user): AVX2 and FMA, no AVX-512, "
        "no VNNI; one thread, so the native vectors it is compared with are one-thread ones too.",
        "Recipes (`services/vector/model_setup.py`): s8 = per-channel 8-bit weights (builder 1); s7 = 7-bit "
        "weights (`reduce_range`: no int16 saturation without VNNI); `-ffn-out-fp32` = each layer's FFN output "
        "MatMul (after GELU) left in fp32.",
        "Kinds: prose-en (retrieval passages, Python's docstrings), code-latex (Python's sources, the retrieval "
        "set's LaTeX and command passages), tables (the set's tables, generated report tables), prose-de (the "
        "German passages); all cut by the vector step's chunker (`bench/quality.py`).",
    ]
    return s
