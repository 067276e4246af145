"""Tiny ONNX models built with ``onnx.helper``, shaped like a PyTorch/TensorFlow export:
one 2-D ``[N, F]`` float input and outputs named as their author liked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save_model

#: An IR version and opset every onnxruntime the project pins can load.
IR_VERSION = 8
OPSET = 13


def _save(
    path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def linear_regression(
    path: Path, weights: np.ndarray[Any, Any], bias: float, width: int | str | None = None
) -> Path:
    """``y = x @ weights + bias``: input ``x`` ``[N, F]``, output ``y`` ``[N, 1]``."""
    f = len(weights)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width or f])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    w = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(f, 1), "W")
    b = numpy_helper.from_array(np.asarray([bias], np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["y"]),
    ]
    return _save(path, nodes, [x], [y], [w, b])


def linear_classifier(
    path: Path, weights: np.ndarray[Any, Any], bias: np.ndarray[Any, Any]
) -> Path:
    """Softmax over ``input @ weights + bias``: input ``input`` ``[N, F]``, outputs
    ``class_id`` (ArgMax, ``[N]`` INT64) and ``probs`` (``[N, C]`` FP32)."""
    f, c = weights.shape
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", f])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", c])
    cls = helper.make_tensor_value_info("class_id", TensorProto.INT64, ["batch"])
    w = numpy_helper.from_array(np.asarray(weights, np.float32), "W")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["class_id"], axis=1, keepdims=0),
    ]
    return _save(path, nodes, [x], [probs, cls], [w, b])


def two_inputs(path: Path) -> Path:
    """``a @ W1 + b @ W2`` with inputs ``a`` ``[N, 2]`` and ``b`` ``[N, 3]``: no mapping fits."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    w1 = numpy_helper.from_array(np.ones((2, 1), np.float32), "W1")
    w2 = numpy_helper.from_array(np.ones((3, 1), np.float32), "W2")
    nodes = [
        helper.make_node("MatMul", ["a", "W1"], ["aw"]),
        helper.make_node("MatMul", ["b", "W2"], ["bw"]),
        helper.make_node("Add", ["aw", "bw"], ["y"]),
    ]
    return _save(path, nodes, [a, b], [y], [w1, w2])


def softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray[Any, Any] = e / e.sum(axis=1, keepdims=True)
    return result
