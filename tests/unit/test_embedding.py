"""Embedding backends: the ONNX graphs built by model_setup are checked against an independent
numpy forward pass of the same safetensors weights, and the int8 graph against the fp32 one on
every kind of text the vector step meets and on the project's retrieval set.

Thresholds are the spread measured for the default int8 graph (s7-ffn-out-fp32, docs/decisions.md)
on an AMD EPYC with AVX-512 VNNI and on an emulated AVX2-only EPYC-Milan (qemu), which give the
same vectors (tests/integration/test_embedding_cpus.py), less the margin stated beside each.
A failure report names onnxruntime's version and the CPU's SIMD flags (tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bench import quality
from services.vector import model_setup
from services.vector.embedding import (
    CUDA,
    Embedder,
    NoGpu,
    NumpyReferenceEmbedder,
    OnnxEmbedder,
    load_embedder,
    usable_cpus,
)

PASSAGES = [
    # ~1000 characters each, the size of a production chunk (~220-250 tokens).
    "The municipal water authority reported that groundwater levels in the northern basin fell by an "
    "average of forty centimetres per year between 2009 and 2019. Engineers attribute the decline mainly "
    "to agricultural irrigation, which accounts for roughly seventy percent of all extraction, and to a "
    "series of unusually dry winters that reduced natural recharge. The report recommends metering every "
    "well above a minimum depth, introducing a tiered tariff for large users and restoring two wetlands "
    "that historically acted as infiltration zones. It also warns that saline intrusion has already been "
    "detected in three coastal monitoring wells, and that further drawdown could make part of the aquifer "
    "unusable for drinking water within two decades. A public consultation on the proposed measures will "
    "run until the end of March, after which the board will vote on a revised extraction cap and a "
    "five-year investment programme for monitoring stations and leak reduction in the distribution network.",
    "Under clause 14 of the agreement, the supplier shall indemnify the purchaser against all losses, "
    "claims and expenses arising from defects in materials or workmanship discovered within twenty-four "
    "months of delivery. The purchaser must notify the supplier in writing within thirty days of becoming "
    "aware of a defect, describing its nature and the circumstances in which it was found. The supplier "
    "may, at its option, repair or replace the defective goods or refund the price paid for them, and this "
    "remedy shall be the purchaser's sole remedy for breach of warranty. Nothing in this clause limits "
    "liability for death or personal injury caused by negligence, or for fraud. Any dispute concerning "
    "the existence of a defect shall first be referred to an independent expert appointed jointly by the "
    "parties, whose decision shall be final and binding except in the case of manifest error, and whose "
    "fees shall be borne by the party against whom the expert substantially decides the matter in question.",
    "Photosynthesis takes place in the chloroplasts of plant cells, where chlorophyll absorbs mainly red "
    "and blue light. In the light-dependent reactions, water molecules are split, releasing oxygen as a "
    "by-product and producing the energy carriers ATP and NADPH. These carriers then power the Calvin "
    "cycle, in which the enzyme rubisco fixes carbon dioxide from the air into three-carbon sugars that "
    "the plant uses to build glucose, starch and cellulose. The efficiency of the whole process is low: "
    "typically only one or two percent of the incoming solar energy ends up stored in biomass. Rubisco is "
    "slow and sometimes binds oxygen instead of carbon dioxide, a wasteful reaction called "
    "photorespiration that increases at high temperatures. Plants such as maize and sugar cane have "
    "evolved a mechanism that concentrates carbon dioxide around rubisco, which lets them grow faster in "
    "hot and sunny climates while losing less water through the small pores in their leaves.",
    "Consumers in a Kafka consumer group divide the partitions of a topic among themselves, so that each "
    "partition is read by exactly one member of the group at a time. When a consumer joins or leaves, the "
    "group coordinator triggers a rebalance and the partitions are reassigned. A consumer records its "
    "progress by committing offsets; if it crashes after processing a record but before committing, the "
    "record will be delivered again to whichever consumer takes over the partition. Applications that "
    "cannot tolerate duplicates must therefore make their processing idempotent, for example by storing "
    "the offset in the same database transaction as the result, or by using a natural key to ignore "
    "repeated writes. Producers can enable idempotence so that retries after a network error do not "
    "create duplicates in the log, and transactions allow a batch of writes across several partitions, "
    "together with the consumed offsets, to become visible atomically to consumers reading committed data.",
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_setup.build(tmp_path_factory.mktemp("model")).directory


@pytest.fixture(scope="session")
def reference() -> NumpyReferenceEmbedder:
    return NumpyReferenceEmbedder()


@pytest.fixture(scope="session")
def ref_vectors(reference: NumpyReferenceEmbedder) -> np.ndarray:
    return reference.embed(PASSAGES)


@pytest.fixture(scope="session")
def int8(model_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_dir / model_setup.INT8_FILE)


@pytest.fixture(scope="session")
def fp32(model_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_dir / model_setup.FP32_FILE)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_passages_are_chunk_sized() -> None:
    assert all(950 <= len(p) <= 1100 for p in PASSAGES)


def test_fp32_graph_matches_numpy_reference(fp32: OnnxEmbedder, ref_vectors: np.ndarray) -> None:
    got = fp32.embed(PASSAGES)
    assert cosines(got, ref_vectors).min() >= 0.999
    np.testing.assert_allclose(got, ref_vectors, atol=2e-4)


def test_int8_graph_close_to_numpy_reference(int8: OnnxEmbedder, ref_vectors: np.ndarray) -> None:
    # Measured: 0.9958-0.9973 with and without VNNI (builder 1's s8 graph: 0.9898 without VNNI).
    got = cosines(int8.embed(PASSAGES), ref_vectors)
    assert got.min() >= 0.993, f"int8 vs numpy reference {np.round(got, 4)}"


@pytest.fixture(scope="session")
def corpus_vectors(int8: OnnxEmbedder, fp32: OnnxEmbedder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """int8 and fp32 vectors of 25 chunks of each kind: prose (en, de), code and LaTeX, tables."""
    return {kind: (int8.embed(texts), fp32.embed(texts)) for kind, texts in quality.corpus(per_kind=25).items()}


def test_int8_agrees_with_fp32_on_every_kind_of_text(
    corpus_vectors: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    # Measured over the 1,007 chunks of `make bench`: mean 0.9961, min 0.9893; per kind, means
    # 0.9939 (German prose) to 0.9968 (code and LaTeX). Asserted: the goal (mean >= 0.995) over all
    # 100 chunks, a min 0.004 below the measured one, each kind's mean 0.002 below its lowest.
    got = {kind: cosines(v8, v32) for kind, (v8, v32) in corpus_vectors.items()}
    every = np.concatenate(list(got.values()))
    table = ", ".join(f"{k} {c.mean():.4f}/{c.min():.4f}" for k, c in got.items())
    message = f"int8 vs fp32 cosine mean/min: {table}; all {every.mean():.4f}/{every.min():.4f}"
    assert every.mean() >= 0.995 and every.min() >= 0.985, message
    assert all(c.mean() >= 0.992 for c in got.values()), message


def test_int8_retrieval_within_one_point_of_fp32(int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    rs = quality.retrieval_set()
    scores = {"int8": quality.retrieve(int8, rs), "fp32": quality.retrieve(fp32, rs)}
    summary = {k: (round(v.recall_at_1, 3), round(v.recall_at_5, 3), round(v.mrr, 3)) for k, v in scores.items()}
    # Not the easy case: fp32 itself misses a sixth of the questions at 5 (measured 0.834).
    assert 0.7 <= scores["fp32"].recall_at_5 < 0.95, f"recall@1, @5, MRR {summary}"
    # Measured: int8 0.831 against fp32 0.834 (the goal: within 1 point).
    assert scores["int8"].recall_at_5 >= scores["fp32"].recall_at_5 - 0.01, f"recall@1, @5, MRR {summary}"
    assert scores["int8"].mrr >= scores["fp32"].mrr - 0.01, f"recall@1, @5, MRR {summary}"


def test_int8_weights_cannot_saturate_without_vnni(model_dir: Path) -> None:
    """Without VNNI, u8 x s8 pair sums go through a saturating int16 (VPMADDUBSW): 7-bit weights
    keep 2 x 255 x 64 inside it, so every CPU computes the same int32 sums."""
    graph = onnx.load(str(model_dir / model_setup.INT8_FILE)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    quantized = [n for n in graph.node if n.op_type in ("MatMulInteger", "QAttention")]
    assert len(quantized) == 3 * model_setup.LAYERS  # per layer: QKV, attention output, FFN input
    for node in quantized:
        w = weights[node.input[1]]
        assert w.ndim == 2 and np.abs(w.astype(np.int32)).max() <= 64, f"{node.name}: weights {w.min()}..{w.max()}"
    assert sum(n.op_type == "MatMul" for n in graph.node) == model_setup.LAYERS


def test_short_and_empty_texts(fp32: OnnxEmbedder, reference: NumpyReferenceEmbedder) -> None:
    texts = ["", "a cat", "What was the revenue growth in Europe?"]
    assert cosines(fp32.embed(texts), reference.embed(texts)).min() >= 0.999


def test_long_text_is_truncated_at_256_tokens(fp32: OnnxEmbedder) -> None:
    head = PASSAGES[0] + " " + PASSAGES[1]  # > 256 tokens on its own
    a, b, short = fp32.embed([head + " " + PASSAGES[2], head + " " + PASSAGES[3], PASSAGES[0]])
    np.testing.assert_allclose(a, b, atol=1e-5)  # what follows token 256 is ignored
    assert float(a @ short) < 0.99  # ... but not truncated at the shipped 128 either


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_vectors_shape_dtype_norm(kind: str, int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    embedder = int8 if kind == "int8" else fp32
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384 and embedder.name
    vectors = embedder.embed(PASSAGES)
    assert vectors.shape == (len(PASSAGES), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_semantic_sanity(kind: str, int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    embedder = int8 if kind == "int8" else fp32
    query, paraphrase, unrelated = embedder.embed(
        [
            "How much did groundwater levels drop in the northern basin?",
            "The water table under the northern basin has been falling by about 40 cm every year.",
            "The supplier must replace defective goods delivered under the contract.",
        ]
    )
    assert query @ paraphrase > query @ unrelated + 0.2
    # Retrieval over the passages: each question finds its passage.
    questions = [
        "Why is the aquifer losing water?",
        "Who pays when delivered goods turn out to be faulty?",
        "How do plants turn sunlight into sugar?",
        "What happens to uncommitted offsets when a consumer crashes?",
    ]
    scores = embedder.embed(questions) @ embedder.embed(PASSAGES).T
    assert list(scores.argmax(axis=1)) == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_vectors_do_not_depend_on_the_batch(kind: str, int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    """A batch redone after a crash, cut differently, upserts the same vectors."""
    embedder = int8 if kind == "int8" else fp32
    texts = [*PASSAGES, "a cat", "", *quality.corpus(per_kind=7).get("tables", [])] * 4
    vectors = {
        size: np.vstack([embedder.embed(texts[i : i + size]) for i in range(0, len(texts), size)])
        for size in (1, 7, 32)
    }
    np.testing.assert_array_equal(vectors[7], vectors[1])
    np.testing.assert_array_equal(vectors[32], vectors[1])


def test_load_embedder_factory(model_dir: Path) -> None:
    e8 = load_embedder("int8", model_dir=model_dir, threads=1)
    e32 = load_embedder("fp32", model_dir=model_dir)
    assert isinstance(e8, OnnxEmbedder) and e8.path.name == model_setup.INT8_FILE and e8.threads == 1
    assert isinstance(e32, OnnxEmbedder) and e32.path.name == model_setup.FP32_FILE
    assert isinstance(load_embedder("numpy"), NumpyReferenceEmbedder)
    with pytest.raises(ValueError):
        load_embedder("bf16")  # type: ignore[arg-type]


def test_threads_follow_the_cpus_the_process_may_use(model_dir: Path) -> None:
    """A replica pinned to cores (taskset, a cpuset) runs one model thread per core it has."""
    import os

    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        assert usable_cpus() == 1 and load_embedder("int8", model_dir=model_dir).threads == 1  # type: ignore[attr-defined]
    finally:
        os.sched_setaffinity(0, everything)
    assert usable_cpus() == len(everything)


def has_cuda() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


@pytest.mark.skipif(has_cuda(), reason="this onnxruntime has a CUDA provider: the agreement test runs instead")
def test_cuda_asked_for_without_a_gpu_is_refused_and_says_why(model_dir: Path) -> None:
    with pytest.raises(NoGpu, match=r"needs a CUDA device and onnxruntime-gpu .*offers .*CPUExecutionProvider"):
        load_embedder("cuda", model_dir=model_dir)


@pytest.mark.skipif(not has_cuda(), reason="no CUDA provider in this onnxruntime (a GPU machine runs it)")
def test_cuda_vectors_agree_with_the_fp32_cpu_graph(model_dir: Path, fp32: OnnxEmbedder) -> None:
    gpu = load_embedder("cuda", model_dir=model_dir)
    texts = [t for kind in quality.corpus(per_kind=25).values() for t in kind]
    agreement = cosines(gpu.embed(texts), fp32.embed(texts))
    assert agreement.mean() >= 0.999 and agreement.min() >= 0.995, (agreement.mean(), agreement.min())


# --------------------------------------------------------------------------- model_setup


def test_setup_manifest_and_idempotence(model_dir: Path) -> None:
    files = model_setup.model_files(model_dir)
    manifest = json.loads(files.manifest.read_text())
    assert manifest["source"] == {
        "model.safetensors": model_setup.SAFETENSORS_SHA256,
        "tokenizer.json": model_setup.TOKENIZER_SHA256,
    }
    for name, digest in manifest["files"].items():
        assert model_setup.sha256_file(model_dir / name) == digest
    assert model_setup.is_built(files)

    mtimes = {p: p.stat().st_mtime_ns for p in (files.fp32, files.int8, files.manifest)}
    model_setup.build(model_dir)  # already built: nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_setup_rebuilds_tampered_files(tmp_path: Path, model_dir: Path) -> None:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(model_dir, target)
    files = model_setup.model_files(target)
    with open(files.int8, "r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"0123456789")
    assert not model_setup.is_built(files)
    model_setup.build(target)
    assert model_setup.is_built(files)
    assert model_setup.sha256_file(files.int8) == model_setup.sha256_file(model_dir / model_setup.INT8_FILE)


def test_setup_rejects_unexpected_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_setup, "SAFETENSORS_SHA256", "0" * 64)
    with pytest.raises(model_setup.ModelSetupError, match="sha256 mismatch"):
        model_setup.build(tmp_path / "never")
    assert not (tmp_path / "never" / model_setup.MANIFEST_FILE).exists()


def test_default_model_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UDS3_MODEL_DIR", str(tmp_path))
    assert model_setup.default_model_dir() == tmp_path
    monkeypatch.delenv("UDS3_MODEL_DIR")
    assert model_setup.default_model_dir().parts[-3:] == (".stack", "models", "all-MiniLM-L6-v2")
