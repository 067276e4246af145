"""Loading a model: fetch the artifacts, verify the digest, build the onnxruntime
session, the drift windows and the batcher, and warm it up.

The artifact formats (``model.json``, ``profile.json``, the ONNX input
convention) belong to the trainer and are read through its typed models in
:mod:`kubeloop.trainer.artifacts`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import Executor
from typing import Any, Literal

import fsspec
import numpy as np
import onnxruntime as ort

from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.serving import describe as art
from kubeloop.serving.batching import Feed, MicroBatcher, Outputs
from kubeloop.serving.drift import DriftWindow, Reference
from kubeloop.serving.metrics import MAX_CLASSES, Metrics
from kubeloop.serving.protocol import NUMPY, Column, Decoded, InputSpec, OutputSpec
from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving.model")

ONNX_TO_OIP: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def _join(location: str, name: str) -> str:
    return location.rstrip("/") + "/" + name


def read(location: str, name: str) -> bytes:
    """One artifact file's bytes from a directory or fsspec URI."""
    with fsspec.open(_join(location, name), "rb") as f:
        data: bytes = f.read()
    return data


def fingerprint(location: str) -> str:
    """What identifies the content at the location cheaply: the metadata file's digest
    (it carries the model's sha256, so a new model.onnx means a new model.json)."""
    return hashlib.sha256(read(location, ArtifactLayout.METADATA)).hexdigest()


class LoadedModel:
    """One verified model, ready to run; immutable once built (swapped whole on reload)."""

    def __init__(
        self,
        *,
        desc: art.Description,
        session: ort.InferenceSession,
        fingerprint: str,
        settings: ServingSettings,
        executor: Executor | None,
        metrics: Metrics,
    ) -> None:
        self.name = settings.name or desc.name
        self.version = settings.model_version or desc.version
        self.sha256 = desc.sha256
        self.task: Literal["classification", "regression"] = desc.task
        self.classes = desc.classes
        self.fingerprint = fingerprint
        self.session = session
        self._run_options = ort.RunOptions()
        # The public InferenceSession.run re-checks the feed's names on every call
        # (~15 us); requests are validated against the model's inputs already, so call
        # the binding it wraps when present.
        binding = getattr(session, "_sess", None)
        self._run = binding.run if binding is not None else session.run
        onnx_inputs = {i.name: i for i in session.get_inputs()}
        self.inputs: list[InputSpec] = []
        self.feed_dtypes: list[np.dtype[Any]] = []
        for feature in desc.features:
            onnx_input = onnx_inputs.get(feature.name)
            if onnx_input is None:
                raise ValueError(f"model.onnx has no input for feature '{feature.name}'")
            datatype = ONNX_TO_OIP.get(onnx_input.type)
            if datatype is None:
                raise ValueError(f"input '{feature.name}' has unsupported type {onnx_input.type}")
            self.inputs.append(InputSpec(feature.name, datatype, feature.nullable))  # type: ignore[arg-type]
            self.feed_dtypes.append(NUMPY[datatype])
        if len(onnx_inputs) != len(self.inputs):
            extra = set(onnx_inputs) - {s.name for s in self.inputs}
            raise ValueError(f"model.onnx has inputs model.json does not describe: {sorted(extra)}")
        self.index = {s.name: i for i, s in enumerate(self.inputs)}
        self.feed_names = [s.name for s in self.inputs]
        self._all_fp32 = all(s.datatype == "FP32" for s in self.inputs)
        self.outputs: list[OutputSpec] = []
        for o in session.get_outputs():
            datatype = ONNX_TO_OIP.get(o.type)
            if datatype is None:
                raise ValueError(f"output '{o.name}' has unsupported type {o.type}")
            shape = tuple(d if isinstance(d, int) else -1 for d in (o.shape or []))
            self.outputs.append(OutputSpec(o.name, datatype, shape))  # type: ignore[arg-type]
        self.output_names = [o.name for o in self.outputs]
        self.label_output = desc.label_output
        self.proba_output = desc.proba_output
        if self.label_output not in self.output_names:
            raise ValueError(f"model.onnx has no output '{self.label_output}'")
        if self.proba_output is not None and self.proba_output not in self.output_names:
            self.proba_output = None
        self._label_index = self.output_names.index(self.label_output)

        # drift
        self.drift: DriftWindow | None = None
        self.prediction_drift: DriftWindow | None = None
        self._drift_cols: list[int] = []
        if settings.drift and desc.feature_references:
            watched = settings.drift_features
            refs: list[Reference] = []
            for ref in desc.feature_references:
                if ref.name in self.index and (watched is None or ref.name in watched):
                    refs.append(ref)
                    self._drift_cols.append(self.index[ref.name])
            if refs:
                self.drift = DriftWindow(refs, settings.drift_window)
        self._drift_all = self._drift_cols == list(range(len(self.inputs)))
        if settings.drift and desc.prediction_reference is not None:
            self.prediction_drift = DriftWindow([desc.prediction_reference], settings.drift_window)

        # metrics children, resolved once
        self._batch_hist = metrics.batch_size.labels(self.name, self.version)
        self._class_counters: dict[str, Any] = {}
        self._metrics = metrics
        self._value_hist = None
        if self.task == "regression":
            edges = desc.value_buckets
            self._value_hist = metrics.value_histogram(edges).labels(self.name, self.version)

        if settings.batching:
            self.batcher: MicroBatcher | None = MicroBatcher(
                self.run,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_wait_ms / 1000.0,
                executor=executor,
                on_batch=self.observe,
            )
        else:
            self.batcher = None
        self.warmup_rows = settings.warmup_rows

    # ----------------------------------------------------------------- running

    def feed(self, decoded: Decoded) -> Feed:
        """Model feed from a validated request: ``(rows, 1)`` arrays of the ONNX types."""
        rows = decoded.rows
        matrix = decoded.matrix
        if matrix is not None and self._all_fp32:
            # one conversion and transpose for all columns, then views
            mt = np.ascontiguousarray(matrix.T, dtype=np.float32)
            feed = Feed(
                zip(self.feed_names, mt.reshape(len(self.feed_names), rows, 1), strict=True)
            )
            feed.matrix = matrix
            return feed
        out = Feed()
        for name, dtype, col in zip(
            self.feed_names, self.feed_dtypes, decoded.columns, strict=True
        ):
            if col.dtype != dtype:
                col = col.astype(dtype)
            out[name] = col.reshape(rows, 1)
        return out

    def run(self, feed: Feed) -> Outputs:
        """One onnxruntime call."""
        values = self._run(self.output_names, feed, self._run_options)
        return dict(zip(self.output_names, values, strict=True))

    def observe(self, feed: Feed, outputs: Outputs) -> None:
        """Per-model-call observations: batch size, drift windows, prediction counts.
        Scheduled after the responses are sent, so it costs no request latency."""
        try:
            self._observe(feed, outputs)
        except Exception:  # an observation must never break serving
            log.exception("observing a batch failed")

    def _observe(self, feed: Feed, outputs: Outputs) -> None:
        labels = outputs[self.label_output]
        n = labels.shape[0]
        self._batch_hist.observe(n)
        drift = self.drift
        if drift is not None:
            matrix = getattr(feed, "matrix", None)
            if drift.numeric_only and matrix is not None:
                drift.update_matrix(matrix if self._drift_all else matrix[:, self._drift_cols])
            else:
                names = self.feed_names
                drift.update([feed[names[i]] for i in self._drift_cols])
        flat = labels.reshape(-1)
        if self.prediction_drift is not None:
            self.prediction_drift.update_column(flat)
        if self._value_hist is not None:
            for v in flat.tolist():
                self._value_hist.observe(v)
        elif n == 1:
            self._count_class(flat[0].item() if hasattr(flat[0], "item") else flat[0], 1)
        else:
            values, counts = np.unique(flat, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                self._count_class(v, c)

    def _count_class(self, value: Any, count: int) -> None:
        counter = self._class_counters.get(value)
        if counter is None:
            key = str(value) if len(self._class_counters) < MAX_CLASSES else "other"
            counter = self._metrics.predictions.labels(self.name, self.version, key)
            self._class_counters[value] = counter
        counter.inc(count)

    async def infer(self, feed: Feed, rows: int) -> Outputs:
        """Run the model for one request (through the batcher when batching is on)."""
        batcher = self.batcher
        if batcher is not None:
            return await batcher.infer(feed, rows)
        outputs = self.run(feed)
        asyncio.get_running_loop().call_soon(self.observe, feed, outputs)
        return outputs

    def warm_up(self) -> None:
        """Run a few rows through the session (first calls allocate), checking the outputs."""
        n = self.warmup_rows
        if n == 0:
            return
        columns: list[Column] = []
        for spec in self.inputs:
            if spec.datatype == "BYTES":
                col = np.empty(n, dtype=object)
                col[:] = ""
                columns.append(col)
            else:
                columns.append(np.zeros(n, dtype=NUMPY[spec.datatype]))
        values = self.session.run(None, self.feed(Decoded(columns, n)), self._run_options)
        for out, value in zip(self.outputs, values, strict=True):
            if value.shape[0] != n:
                raise ValueError(f"warm-up: output '{out.name}' has {value.shape[0]} rows, not {n}")

    # ---------------------------------------------------------------- metadata

    def metadata(self) -> dict[str, Any]:
        params: dict[str, Any] = {"task": self.task, "sha256": self.sha256}
        if self.classes is not None:
            params["classes"] = self.classes
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": [-1, 1]} for s in self.inputs
            ],
            "outputs": [
                {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
                for o in self.outputs
            ],
            "parameters": params,
        }


def load_model(
    settings: ServingSettings, executor: Executor | None, metrics: Metrics
) -> LoadedModel:
    """Fetch, verify, build and warm a model from ``settings.model`` (blocking)."""
    location = settings.model
    meta_bytes = read(location, ArtifactLayout.METADATA)
    desc = art.describe(meta_bytes, _read_optional(location, ArtifactLayout.PROFILE), settings)
    onnx_bytes = read(location, ArtifactLayout.MODEL)
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    if digest != desc.sha256:
        raise ValueError(
            f"{ArtifactLayout.MODEL} has sha256 {digest}, but {ArtifactLayout.METADATA} "
            f"says {desc.sha256}; refusing to serve it"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    model = LoadedModel(
        desc=desc,
        session=session,
        fingerprint=hashlib.sha256(meta_bytes).hexdigest(),
        settings=settings,
        executor=executor,
        metrics=metrics,
    )
    model.warm_up()
    return model


def _read_optional(location: str, name: str) -> bytes | None:
    try:
        return read(location, name)
    except FileNotFoundError:
        log.warning("%s has no %s: drift monitoring is off", location, name)
        return None
