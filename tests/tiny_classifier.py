"""A tiny text classifier built on the spot: an ONNX graph and a word-level tokenizer.

Each known word carries fixed logits for the labels (``WORDS``); the model
averages the logits of a window's words (padding masked out), optionally after
``layers`` dense layers of width ``hidden`` that cost real CPU (for benchmarks)
but leave the logits as they are. So a test knows what any text scores:
``expected`` computes it with numpy, apart from the tokenizer and ONNX Runtime.
Saved as a Hugging Face model directory: model.onnx, tokenizer.json, config.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

LABELS = ("BENIGN", "INJECTION", "JAILBREAK")
# A word's logits for BENIGN, INJECTION, JAILBREAK; unknown words read as [UNK].
WORDS: dict[str, tuple[float, float, float]] = {
    "[PAD]": (0.0, 0.0, 0.0),
    "[UNK]": (1.0, 0.0, 0.0),
    "hello": (4.0, 0.0, 0.0),
    "weather": (4.0, 0.0, 0.0),
    "paris": (4.0, 0.0, 0.0),
    "ignore": (0.0, 30.0, 0.0),
    "instructions": (0.0, 30.0, 0.0),
    "jailbreak": (0.0, 0.0, 30.0),
    "dan": (0.0, 0.0, 30.0),
}
VOCAB = list(WORDS)
# A word the tokenizer knows and the model's table has no row for: the model run fails.
BROKEN_WORD = "overflow"
# A word whose row (``poisoned``) is NaN: the run succeeds and its scores are not numbers.
POISONED_WORD = "poison"


def build(
    directory: Path,
    *,
    hidden: int = 0,
    layers: int = 0,
    broken_word: bool = False,
    poisoned: bool = False,
    labels: tuple[str, ...] = LABELS,
) -> Path:
    """Write the model directory and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    rows = [WORDS[w] for w in VOCAB] + ([(math.nan, 0.0, 0.0)] if poisoned else [])
    table = np.array(rows, dtype=np.float32)
    width = table.shape[1]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["logits0"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
    ]
    current = "logits0"
    if layers:
        # Dense layers that cost CPU per token: up to ``hidden`` and back, the
        # round trip adding a multiple of zero so the logits stay the same.
        rng = np.random.default_rng(0)
        inits.append(numpy_helper.from_array(np.zeros((width, hidden), np.float32), "up"))
        nodes.append(helper.make_node("MatMul", [current, "up"], ["h0"]))
        for i in range(layers):
            weights = rng.standard_normal((hidden, hidden)).astype(np.float32) / hidden
            inits.append(numpy_helper.from_array(weights, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
        inits.append(numpy_helper.from_array(np.zeros((hidden, width), np.float32), "down"))
        nodes.append(helper.make_node("MatMul", [f"h{layers}", "down"], ["back"]))
        nodes.append(helper.make_node("Add", [current, "back"], ["dense"]))
        current = "dense"
    nodes += [
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", [current, "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-classifier",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the extra allows
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))

    vocab = {word: i for i, word in enumerate(VOCAB)}
    if broken_word:
        vocab[BROKEN_WORD] = len(VOCAB) + 10
    if poisoned:
        vocab[POISONED_WORD] = len(VOCAB)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"id2label": {str(i): label for i, label in enumerate(labels)}, "pad_token_id": 0}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def expected(text: str) -> dict[str, float]:
    """What the model gives ``text`` scored as one window: each label's probability."""
    import re

    words = [w if w in WORDS else "[UNK]" for w in re.findall(r"\w+|[^\w\s]+", text.lower())]
    logits = np.mean([WORDS[w] for w in words], axis=0)
    shifted = np.exp(logits - logits.max())
    return dict(zip(LABELS, (shifted / shifted.sum()).tolist(), strict=True))
