"""Bringing a model exported elsewhere (PyTorch, TensorFlow, ...) into the registry.

``kubeloop register`` reads an ONNX graph, decides how the server feeds it and which
outputs carry the prediction (:func:`plan`, pure), checks that onnxruntime runs it,
profiles a reference table for drift, and publishes ``model.onnx``, ``model.json`` and
``profile.json`` under a content-addressed folder of the artifact store — the same
files a trainer run writes, so serving, canary analysis, drift monitoring and rollback
treat the model like a trained one. Every check happens before anything is written.

A model with one 2-D ``[N, F]`` float input (the usual export) is served by naming its
``F`` features: clients send them one by one, as to a trained model, and the server
stacks them into the tensor (``ModelMetadata.packed_input``). A model with one ``[N, 1]``
input per feature already follows the trainer's convention.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from kubeloop import inference
from kubeloop.api.base import API_VERSION
from kubeloop.api.v1alpha1 import ModelVersionSpec, TensorSpec
from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    ArtifactLayout,
    Lineage,
    ModelMetadata,
    Profile,
    join,
)
from kubeloop.contracts.frameworks import Task

if TYPE_CHECKING:
    import onnx
    import pandas as pd

#: What ``lineage.estimator`` says of a model that was not trained here.
REGISTERED: Final = "onnx (registered)"
#: ONNX element types the server feeds and answers, as OIP datatypes.
_ELEM_TYPES: Final = {1: "FP32", 11: "FP64", 6: "INT32", 7: "INT64", 9: "BOOL", 8: "BYTES"}
#: The convention's prediction output, by task.
_CONVENTION: Final[dict[str, str]] = {"classification": LABEL_OUTPUT, "regression": VALUE_OUTPUT}


class RegisterError(Exception):
    """A model, flag or file that cannot be registered; one line naming it."""


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output: its OIP datatype (None: not a servable tensor)."""

    name: str
    datatype: str | None
    shape: tuple[int, ...]  # -1 for a free dimension
    onnx_type: str

    def shown(self) -> str:
        dims = ", ".join("N" if i == 0 and d == -1 else str(d) for i, d in enumerate(self.shape))
        return f"'{self.name}' [{dims}]"


@dataclass(frozen=True)
class Graph:
    inputs: list[GraphTensor]
    outputs: list[GraphTensor]


@dataclass(frozen=True)
class Options:
    """What the command line says about the model."""

    task: Task
    feature_names: list[str] | None = None
    label_output: str | None = None
    proba_output: str | None = None


@dataclass(frozen=True)
class Plan:
    """How the server feeds the model and reads its answer."""

    features: list[TensorSpec]  # what clients send, one [-1, 1] column each
    packed_input: str | None
    outputs: list[TensorSpec]
    label_output: str
    proba_output: str | None
    classes: list[int] | None


# ------------------------------------------------------------------ the graph


def read_graph(onnx_bytes: bytes, where: str) -> Graph:
    """The graph's inputs (initializers excluded) and outputs; RegisterError for bytes that
    are not an ONNX model."""
    import onnx

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:  # protobuf's DecodeError (its stubs are not installed)
        raise RegisterError(f"{where}: not an ONNX model ({exc})") from None
    graph = model.graph
    if not model.ir_version or not graph.node or not graph.output:
        raise RegisterError(f"{where}: not an ONNX model (no graph nodes or outputs)")
    initialized = {i.name for i in graph.initializer}
    return Graph(
        inputs=[_tensor(t) for t in graph.input if t.name not in initialized],
        outputs=[_tensor(t) for t in graph.output],
    )


def _tensor(value: onnx.ValueInfoProto) -> GraphTensor:
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return GraphTensor(value.name, None, (), str(kind))
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    onnx_type = f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})"
    return GraphTensor(value.name, _ELEM_TYPES.get(tensor.elem_type), dims, onnx_type)


def tensors(found: list[GraphTensor]) -> list[TensorSpec]:
    """The graph's tensors as OIP specs; RegisterError for one that is not a servable tensor."""
    for t in found:
        if t.datatype is None:
            raise RegisterError(f"'{t.name}' is {t.onnx_type}; only tensors can be served")
    return [
        TensorSpec.model_validate({"name": t.name, "datatype": t.datatype, "shape": list(t.shape)})
        for t in found
    ]


# ------------------------------------------------------------------ the plan


def plan(graph: Graph, opts: Options) -> Plan:
    """How to serve ``graph``; RegisterError naming the input, output or flag that does
    not fit."""
    features, packed = _features(graph.inputs, opts.feature_names)
    label, proba = _prediction_outputs(graph.outputs, opts)
    classes = None
    if proba is not None:
        width = next(o.shape for o in graph.outputs if o.name == proba)
        classes = list(range(width[1])) if len(width) == 2 and width[1] > 0 else None
    return Plan(features, packed, tensors(graph.outputs), label, proba, classes)


def _features(
    inputs: list[GraphTensor], names: list[str] | None
) -> tuple[list[TensorSpec], str | None]:
    """The features clients send, and the packed input they are stacked into (if any)."""
    if not inputs:
        raise RegisterError(f"{ArtifactLayout.MODEL} has no inputs")
    if names is not None and len(set(names)) != len(names):
        raise RegisterError(f"--feature-names: a feature is named twice in {','.join(names)}")
    one = inputs[0]
    if len(inputs) == 1 and len(one.shape) == 2 and (names is not None or one.shape[1] != 1):
        return _packed(one, names), one.name
    odd = [i for i in inputs if len(i.shape) != 2 or i.shape[1] != 1]
    if odd:
        shown = ", ".join(i.shown() for i in inputs)
        raise RegisterError(
            f"{ArtifactLayout.MODEL} has inputs {shown}: only one 2-D [N, F] float input "
            "(with --feature-names) or one [N, 1] input per feature can be served"
        )
    for i in inputs:
        if i.datatype is None:
            raise RegisterError(f"input '{i.name}' is {i.onnx_type}, which cannot be served")
    given = [i.name for i in inputs]
    if names is not None and sorted(names) != sorted(given):
        raise RegisterError(
            f"--feature-names {','.join(names)}: the model's inputs are {', '.join(given)} "
            "(one per feature, named after it)"
        )
    order = names or given
    by_name = {i.name: i for i in inputs}
    return [_feature(n, str(by_name[n].datatype)) for n in order], None


def _packed(one: GraphTensor, names: list[str] | None) -> list[TensorSpec]:
    """The features of a model whose one ``[N, F]`` input holds them all."""
    width = one.shape[1]
    if one.datatype not in ("FP32", "FP64"):
        raise RegisterError(f"input {one.shown()} is {one.onnx_type}; a 2-D input must be float")
    if names is None:
        count = "its" if width == -1 else f"its {width}"
        raise RegisterError(
            f"{ArtifactLayout.MODEL} has one 2-D input {one.shown()}: "
            f"name {count} features with --feature-names a,b,..."
        )
    if width != -1 and width != len(names):
        raise RegisterError(
            f"--feature-names names {len(names)} features; input {one.shown()} takes {width}"
        )
    return [_feature(n, one.datatype) for n in names]


def _feature(name: str, datatype: str) -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": [-1, 1]})


def _prediction_outputs(outputs: list[GraphTensor], opts: Options) -> tuple[str, str | None]:
    """The outputs holding the prediction and (classification) the probabilities."""
    by_name = {o.name: o for o in outputs}
    listed = ", ".join(by_name)
    flags = (("--label-output", opts.label_output), ("--proba-output", opts.proba_output))
    for flag, given in flags:
        if given is not None and given not in by_name:
            raise RegisterError(
                f"{flag} '{given}': {ArtifactLayout.MODEL} has no such output "
                f"(its outputs: {listed})"
            )
    for o in outputs:
        if o.datatype is None:
            raise RegisterError(f"output '{o.name}' is {o.onnx_type}; only tensors can be served")
    label = opts.label_output or _default_label(outputs, opts.task)
    shape = by_name[label].shape
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise RegisterError(
            f"output {by_name[label].shown()} cannot be the prediction: it needs one value per "
            "row ([N] or [N, 1]); name another with --label-output"
        )
    if opts.task == "regression":
        if opts.proba_output is not None:
            raise RegisterError("--proba-output: a regression model has no probabilities")
        return label, None
    proba = opts.proba_output
    if proba is None and PROBA_OUTPUT in by_name and label != PROBA_OUTPUT:
        proba = PROBA_OUTPUT
    if proba is not None and (by_name[proba].datatype != "FP32" or len(by_name[proba].shape) != 2):
        raise RegisterError(f"output {by_name[proba].shown()} is not a 2-D FP32 probability table")
    if proba == label:
        raise RegisterError(f"output '{label}' cannot be both the label and the probabilities")
    return label, proba


def _default_label(outputs: list[GraphTensor], task: Task) -> str:
    names = [o.name for o in outputs]
    if _CONVENTION[task] in names:
        return _CONVENTION[task]
    if len(names) == 1:
        return names[0]
    raise RegisterError(
        f"{ArtifactLayout.MODEL} has outputs {', '.join(names)} and none named "
        f"'{_CONVENTION[task]}': name the prediction with --label-output"
    )


# ------------------------------------------------------------------ running it


def check_runs(onnx_bytes: bytes, planned: Plan, frame: pd.DataFrame | None) -> dict[str, Any]:
    """Run the model as the server will (same input specs, same packing) on the reference
    rows, or on two rows of zeros without them; its outputs. RegisterError when
    onnxruntime cannot load or run it."""
    feats = [inference.Feature(f.name, nullable=False) for f in planned.features]
    try:
        session = inference.new_session(onnx_bytes, threads=1)
        specs = inference.input_specs(feats, session, planned.packed_input)
    except Exception as exc:  # onnxruntime's errors have no common base
        raise RegisterError(f"{ArtifactLayout.MODEL}: onnxruntime cannot load it: {exc}") from None
    rows = 2 if frame is None else len(frame)
    feed = {}
    for spec in specs:
        if frame is None:
            column = np.zeros(rows, inference.NUMPY[spec.datatype])
        else:
            column = _reference_column(frame, spec)
        feed[spec.name] = inference.feed_column(column, spec, rows)
    if planned.packed_input is not None:
        feed = inference.pack(feed, [s.name for s in specs], planned.packed_input)
    names = [o.name for o in planned.outputs]
    try:
        values = session.run(names, feed)
    except Exception as exc:
        raise RegisterError(f"{ArtifactLayout.MODEL}: onnxruntime cannot run it: {exc}") from None
    return dict(zip(names, values, strict=True))


def _reference_column(frame: pd.DataFrame, spec: inference.InputSpec) -> inference.Column:
    """A reference column as the input's datatype; RegisterError for one that is not."""
    column: inference.Column = frame[spec.name].to_numpy()
    if spec.datatype == "BYTES":
        text: inference.Column = column.astype(str).astype(object)
        return text
    try:
        typed: inference.Column = column.astype(inference.NUMPY[spec.datatype])
        return typed
    except (TypeError, ValueError):
        raise RegisterError(
            f"--reference: column '{spec.name}' is not {spec.datatype}, as the model takes it"
        ) from None


def reference_frame(uri: str, planned: Plan) -> pd.DataFrame:
    """The reference table's feature columns; RegisterError naming a missing one."""
    import pandas as pd

    try:
        frame = pd.read_csv(uri)
    except (OSError, ValueError) as exc:
        raise RegisterError(f"--reference {uri}: {exc}") from None
    for f in planned.features:
        if f.name not in frame.columns:
            raise RegisterError(
                f"--reference {uri}: no column '{f.name}' (the model's features: "
                f"{', '.join(x.name for x in planned.features)})"
            )
    if frame.empty:
        raise RegisterError(f"--reference {uri}: no rows")
    return frame[[f.name for f in planned.features]]


def profile_of(frame: pd.DataFrame, planned: Plan, outputs: dict[str, Any], task: Task) -> Profile:
    """The reference distributions (the trainer's profile code) and the model's own
    predictions on those rows, so prediction drift has a reference too."""
    import pandas as pd

    from kubeloop.trainer import data

    prediction = pd.Series(np.asarray(outputs[planned.label_output]).reshape(-1))
    numeric = task == "regression"
    return Profile(
        rows=len(frame),
        features={
            str(name): data.profile_series(frame[name], data.is_numeric(frame[name]))
            for name in frame.columns
        },
        prediction=data.profile_series(prediction if numeric else prediction.astype(str), numeric),
    )


def metadata_of(
    name: str, task: Task, sha256: str, planned: Plan, metrics: dict[str, float], reference: str
) -> ModelMetadata:
    """``model.json`` of a registered model: the trainer's contract, plus the packed input
    and the output names."""
    return ModelMetadata(
        name=name,
        task=task,
        sha256=sha256,
        inputs=planned.features,
        outputs=planned.outputs,
        packed_input=planned.packed_input,
        label_output=planned.label_output,
        proba_output=planned.proba_output,
        target="",
        classes=planned.classes,
        metrics=metrics,
        lineage=Lineage(
            data_uri=reference,
            estimator=REGISTERED,
            seed=0,
            libraries={lib: dist_version(lib) for lib in ("onnx", "onnxruntime")},
        ),
        created=datetime.now(UTC),
    )


# ------------------------------------------------------------------ the registry


def model_dir(store: str, namespace: str, name: str, sha256: str) -> str:
    """The content-addressed folder of a registered model: one per name and ONNX digest."""
    return join(store, "models", namespace, name, sha256)


def same_contract(a: ModelMetadata, b: ModelMetadata) -> bool:
    """Whether two ``model.json`` describe the same registration (``created`` aside)."""
    return a.model_dump(exclude={"created"}) == b.model_dump(exclude={"created"})


def version_name(model: str, version: int) -> str:
    """``<model>-v<version>`` cut to a DNS label, as the operator names versions."""
    suffix = f"v{version}"
    return f"{model[: 63 - len(suffix) - 1].rstrip('-')}-{suffix}"


def build_model_version(
    meta: ModelMetadata, artifact_uri: str, profile_uri: str | None, version: int, namespace: str
) -> dict[str, Any]:
    """The ModelVersion manifest of a registered model (validated by the typed spec)."""
    spec: dict[str, Any] = {
        "modelName": meta.name,
        "version": version,
        "task": meta.task,
        "artifact": {"uri": artifact_uri, "sha256": meta.sha256},
        "inputs": [t.to_wire() for t in meta.inputs],
        "outputs": [t.to_wire() for t in meta.outputs],
    }
    if meta.metrics:
        spec["metrics"] = meta.metrics
    if profile_uri:
        spec["profileUri"] = profile_uri
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": version_name(meta.name, version), "namespace": namespace},
        "spec": ModelVersionSpec.model_validate(spec).to_wire(),
    }


def digest(onnx_bytes: bytes) -> str:
    return hashlib.sha256(onnx_bytes).hexdigest()
