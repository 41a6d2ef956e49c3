"""Text embedding backends for all-MiniLM-L6-v2 (384-d, mean pooled, L2 normalised).

* ``OnnxEmbedder`` - onnxruntime + tokenizers on the graphs built by ``model_setup``;
  the int8 graph is the production default, the fp32 graph is the accuracy reference and what
  ``cuda`` runs on a GPU (onnxruntime-gpu's CUDA provider, batched: a GPU needs batches).
* ``NumpyReferenceEmbedder`` - plain numpy BERT forward pass straight from the safetensors
  weights; independent of the ONNX graph construction, slow, only used to validate the graphs.

Nothing here downloads anything: the model must have been prepared by
``python -m services.vector.model_setup`` (``load_embedder`` builds it if missing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from services.vector import model_setup

DIM = model_setup.HIDDEN
MAX_TOKENS = model_setup.MAX_TOKENS
# The SIMD extensions that decide which int8 kernels onnxruntime runs (see runtime_description).
_SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8")

Vectors = npt.NDArray[np.float32]
EmbedderKind = Literal["int8", "fp32", "cuda", "numpy"]
CUDA = "CUDAExecutionProvider"


class NoGpu(RuntimeError):
    """`UDS3_EMBEDDER=cuda` where onnxruntime cannot run on a CUDA device."""


def usable_cpus() -> int:
    """The CPUs this process may run on (taskset, a cgroup's cpuset), not the machine's: a
    replica pinned to one core runs one thread."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> Vectors:
        """Return float32 [len(texts), dim], each row L2-normalised, in input order."""
        ...


def load_tokenizer(path: Path | str) -> Tokenizer:
    """The shipped tokenizer.json pads and truncates at 128: truncate at 256, pad to longest."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # no length => pad to longest in batch
    return tokenizer


def _encode(tokenizer: Tokenizer, texts: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def _batched(texts: list[str], batch_size: int, run: _BatchFn) -> Vectors:
    """Embed in batches of similar length (less padding), returning rows in input order."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = run([texts[i] for i in idx])
    return out


class _BatchFn(Protocol):
    def __call__(self, texts: list[str], /) -> Vectors: ...


class OnnxEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime (CPU), one text per session run.

    Dynamic int8 quantisation picks one activation scale per tensor per run, so in a batch a
    vector would depend on its neighbours; alone, a vector is a pure function of its text, and
    a batch redone after a crash upserts the same vectors. A ~250-token chunk already fills the
    GEMMs: batching gained <5% for int8 on 2 cores, while the activation arena grows with it.
    """

    dim: int = DIM

    def __init__(
        self,
        path: Path | str,
        threads: int | None = None,
        tokenizer_path: Path | str | None = None,
        provider: str = "CPUExecutionProvider",
        batch: int = 1,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = f"all-MiniLM-L6-v2/{self.path.stem}"
        self.threads = threads or usable_cpus()
        self.batch = batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(self.path), options, providers=[provider])
        if provider not in self._session.get_providers():  # onnxruntime falls back to the CPU quietly
            raise NoGpu(f"onnxruntime could not start {provider} (its CUDA libraries or the device are missing)")
        self._tokenizer = load_tokenizer(tokenizer_path or self.path.parent / model_setup.TOKENIZER_FILE)

    def _run(self, texts: list[str]) -> Vectors:
        ids, mask = _encode(self._tokenizer, texts)
        (vectors,) = self._session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, texts: list[str]) -> Vectors:
        if self.batch > 1:  # fp32 only: no per-run quantisation scale, so batches change nothing
            return _batched(texts, self.batch, self._run)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._run([text])[0]
        return out


# --------------------------------------------------------------------------- numpy reference


def _erf(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 - plenty for a reference in float64.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(
    x: npt.NDArray[np.float64], gamma: npt.NDArray[np.float64], beta: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + model_setup.LAYER_NORM_EPS) * gamma + beta


class NumpyReferenceEmbedder:
    """Straightforward float64 BERT forward pass, following HF BertModel + sentence-transformers
    mean pooling + Normalize. Slow; for tests only."""

    dim: int = DIM
    name = "all-MiniLM-L6-v2/numpy-reference"

    def __init__(
        self, weights_path: Path | str | None = None, tokenizer_path: Path | str | None = None
    ) -> None:
        if weights_path is None or tokenizer_path is None:
            src_weights, src_tokenizer = model_setup.verified_sources()
            weights_path = weights_path or src_weights
            tokenizer_path = tokenizer_path or src_tokenizer
        from safetensors.numpy import load_file

        raw = load_file(str(weights_path))
        self._w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
        self._tokenizer = load_tokenizer(tokenizer_path)

    def _linear(self, x: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
        return x @ self._w[name + ".weight"].T + self._w[name + ".bias"]

    def _run(self, texts: list[str]) -> Vectors:
        w = self._w
        ids, mask = _encode(self._tokenizer, texts)
        batch, seq = ids.shape
        heads, head_dim = model_setup.HEADS, DIM // model_setup.HEADS
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
            + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        # HF extended attention mask: large negative on padding keys.
        key_bias = (1.0 - mask[:, None, None, :].astype(np.float64)) * np.finfo(np.float32).min
        for i in range(model_setup.LAYERS):
            p = f"encoder.layer.{i}."

            def split(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
                return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

            q = split(self._linear(x, p + "attention.self.query"))
            k = split(self._linear(x, p + "attention.self.key"))
            v = split(self._linear(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + key_bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, DIM)
            attn = self._linear(ctx, p + "attention.output.dense")
            x = _layer_norm(
                attn + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]
            )
            h = self._linear(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            h = self._linear(h, p + "output.dense")
            x = _layer_norm(h + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        m = mask[:, :, None].astype(np.float64)
        pooled = (x * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32)

    def embed(self, texts: list[str]) -> Vectors:
        return _batched(texts, 8, self._run)


def load_embedder(
    kind: EmbedderKind = "int8", threads: int | None = None, model_dir: Path | str | None = None
) -> Embedder:
    """Factory. ``int8`` (default, production), ``fp32`` (ONNX reference), ``cuda`` (the fp32
    graph on a GPU: raises NoGpu where there is none) or ``numpy`` (slow reference). ONNX kinds
    build the model cache (``model_setup.build``) if it is missing or stale."""
    if kind == "numpy":
        return NumpyReferenceEmbedder()
    if kind not in ("int8", "fp32", "cuda"):
        raise ValueError(f"unknown embedder kind {kind!r}")
    if kind == "cuda":
        import onnxruntime as ort

        if CUDA not in ort.get_available_providers():
            raise NoGpu(f"UDS3_EMBEDDER=cuda needs a CUDA device and onnxruntime-gpu in place of onnxruntime; "
                        f"this onnxruntime {ort.__version__} offers {', '.join(ort.get_available_providers())}")
    # build() only checks when the files are current (their hashes and the builder version): a
    # model cache left by an older builder is rebuilt, never served.
    files = model_setup.build(Path(model_dir) if model_dir is not None else None)
    if kind == "cuda":
        return OnnxEmbedder(files.fp32, threads=threads, provider=CUDA, batch=64)
    return OnnxEmbedder(files.int8 if kind == "int8" else files.fp32, threads=threads)


def runtime_description() -> str:
    """onnxruntime's version and the CPU's SIMD flags: what decides the int8 kernels (and their
    arithmetic: without VNNI, u8 x s8 pair sums go through int16 and can saturate)."""
    import onnxruntime as ort

    flags: set[str] = set()
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
    except OSError:
        pass
    simd = " ".join(f for f in _SIMD_FLAGS if f in flags) or "none of " + " ".join(_SIMD_FLAGS)
    return f"onnxruntime {ort.__version__}; {model}; SIMD: {simd}"
