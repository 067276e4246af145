"""Loading a model: fetch the artifacts, verify the digest, build the onnxruntime
session, its observers (drift windows, prediction histograms) and the batcher, and
warm it up.

The artifact formats (``model.json``, ``profile.json``, the ONNX input and output
convention) are the core's contracts (:mod:`kubeloop.contracts.artifacts`), read
through :mod:`kubeloop.serving.describe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, Literal

import fsspec
import numpy as np
import onnxruntime as ort

from kubeloop import inference
from kubeloop.contracts.artifacts import ArtifactLayout, join
from kubeloop.inference import output_specs
from kubeloop.serving import describe as art
from kubeloop.serving.batching import Feed, MicroBatcher, Outputs
from kubeloop.serving.metrics import Metrics
from kubeloop.serving.observers import BatchObserver, DriftMonitor, PredictionStats
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.tensors import (
    NUMPY,
    Column,
    Decoded,
    InputSpec,
    object_column,
)

log = logging.getLogger("kubeloop.serving.model")


class ArtifactError(Exception):
    """A model that cannot be served. ``public`` is what clients and the repository index
    see: it names artifact files and digests, never a path or a file's content (the
    chained cause, for the log, may)."""

    def __init__(self, public: str, detail: str | None = None) -> None:
        super().__init__(detail or public)
        self.public = public


class DigestMismatchError(ArtifactError):
    """model.onnx does not hash to the digest it must have."""


def read(location: str, name: str) -> bytes:
    """One artifact file's bytes from a directory or fsspec URI."""
    with fsspec.open(join(location, name), "rb") as f:
        data: bytes = f.read()
    return data


def _stat(location: str, name: str) -> str:
    """What changes when a file is replaced, without reading it: size, mtime in ns and
    inode for a local file; size and the store's ETag, generation or mtime for others."""
    fs, path = fsspec.core.url_to_fs(join(location, name))
    if "file" in _protocols(fs):
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    info = fs.info(path)
    keys = ("size", "ETag", "etag", "generation", "md5Hash", "LastModified", "mtime")
    return ":".join(str(info.get(k, "")) for k in keys)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def fingerprint(location: str) -> str:
    """What identifies the content at the location cheaply: the metadata file's digest
    and model.onnx's size and modification stamp (a model.onnx replaced alone is
    noticed too; the load then checks its digest)."""
    meta = hashlib.sha256(read(location, ArtifactLayout.METADATA)).hexdigest()
    return f"{meta}:{_stat(location, ArtifactLayout.MODEL)}"


def input_specs(desc: art.Description, session: ort.InferenceSession) -> list[InputSpec]:
    """The model's inputs, typed as the ONNX graph declares them (the core's rule, shared
    with batch prediction)."""
    return inference.input_specs(desc.features, session, desc.packed_input)


def prediction_outputs(
    desc: art.Description, output_names: Sequence[str]
) -> tuple[str, str | None]:
    """The outputs holding the prediction and (when the graph has it) the probabilities."""
    if desc.label_output not in output_names:
        raise ValueError(f"{ArtifactLayout.MODEL} has no output '{desc.label_output}'")
    proba = desc.proba_output if desc.proba_output in output_names else None
    return desc.label_output, proba


class LoadedModel:
    """One verified model, ready to run. Its inputs, outputs and session never change
    (a reload builds a new one and swaps it whole)."""

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
        self.inputs = input_specs(desc, session)
        self.packed_input = desc.packed_input
        self.index = {s.name: i for i, s in enumerate(self.inputs)}
        self.feed_names = [s.name for s in self.inputs]
        self._all_fp32 = all(s.datatype == "FP32" for s in self.inputs)
        self.outputs = output_specs(session)
        self.output_names = [o.name for o in self.outputs]
        self.label_output, self.proba_output = prediction_outputs(desc, self.output_names)
        self.drift = DriftMonitor.build(desc, settings, self.feed_names)
        stats = PredictionStats(metrics, self.name, self.version, desc)
        self.observers: tuple[BatchObserver, ...] = (
            (stats,) if self.drift is None else (stats, self.drift)
        )
        self.batcher: MicroBatcher | None = None
        if settings.batching:
            self.batcher = MicroBatcher(
                self.run,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_wait_ms / 1000.0,
                executor=executor,
                on_batch=self.observe,
                linger_s=settings.grpc_batch_wait_ms / 1000.0,
            )
        self.warmup_rows = settings.warmup_rows

    # ----------------------------------------------------------------- running

    def feed(self, decoded: Decoded) -> Feed:
        """Model feed from a validated request: ``(rows, 1)`` arrays of the ONNX types."""
        rows = decoded.rows
        matrix = decoded.matrix
        if matrix is not None and self._all_fp32:
            # the columns are cut when the model runs: once per micro-batch
            feed = Feed()
            feed.matrix = matrix
            feed.expand_with = self._columns_of
            return feed
        out = Feed()
        for spec, col in zip(self.inputs, decoded.columns, strict=True):
            out[spec.name] = inference.feed_column(col, spec, rows)
        return out

    def _columns_of(self, matrix: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """The ``(rows, 1)`` FP32 inputs of a ``rows x inputs`` matrix: one conversion and
        transpose for all columns, then views."""
        mt = np.ascontiguousarray(matrix.T, dtype=np.float32)
        n = len(self.feed_names)
        return dict(zip(self.feed_names, mt.reshape(n, matrix.shape[0], 1), strict=True))

    def run(self, feed: Feed) -> Outputs:
        """One onnxruntime call (a packed model's columns stacked into its one input)."""
        model_feed: dict[str, np.ndarray[Any, Any]] = (
            feed.expanded() if isinstance(feed, Feed) else feed
        )
        if self.packed_input is not None:
            model_feed = inference.pack(feed, self.feed_names, self.packed_input)
        values = self._run(self.output_names, model_feed, self._run_options)
        return dict(zip(self.output_names, values, strict=True))

    def observe(self, feed: Feed, outputs: Outputs) -> None:
        """Per-model-call observations (batch size, drift windows, prediction counts).
        Scheduled after the responses are sent, so it costs no request latency."""
        for observer in self.observers:
            try:
                observer.on_batch(feed, outputs)
            except Exception:  # an observation must never break serving
                log.exception("observing a batch failed")

    async def infer(self, feed: Feed, rows: int, linger: bool = False) -> Outputs:
        """Run the model for one request (through the batcher when batching is on;
        ``linger``: it may wait for company, see :class:`MicroBatcher`)."""
        batcher = self.batcher
        if batcher is not None:
            return await batcher.infer(feed, rows, linger)
        outputs = self.run(feed)
        asyncio.get_running_loop().call_soon(self.observe, feed, outputs)
        return outputs

    def warm_up(self) -> None:
        """Run a few rows through the session (first calls allocate), checking the outputs."""
        n = self.warmup_rows
        if n == 0:
            return
        columns: list[Column] = [
            object_column([""] * n) if s.datatype == "BYTES" else np.zeros(n, NUMPY[s.datatype])
            for s in self.inputs
        ]
        values = self.run(self.feed(Decoded(columns, n)))
        for out in self.outputs:
            value = values[out.name]
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
    """Fetch, verify, build and warm a model from ``settings.model`` (blocking).

    Every failure is an :class:`ArtifactError` whose public message is safe to answer.
    """
    location = settings.model
    with _stage(f"{ArtifactLayout.METADATA} or {ArtifactLayout.MODEL} cannot be read"):
        fp = fingerprint(location)  # before reading: a change meanwhile is seen next time
    meta_bytes = _read(location, ArtifactLayout.METADATA)
    with _stage(f"{ArtifactLayout.PROFILE} cannot be read"):
        profile = _read_optional(location, ArtifactLayout.PROFILE)
    with _stage(f"{ArtifactLayout.METADATA} or {ArtifactLayout.PROFILE} is not valid"):
        desc = art.describe(meta_bytes, profile)
    if settings.prediction_buckets_from:
        buckets = _buckets_from(settings.prediction_buckets_from)
        desc = dataclasses.replace(desc, value_buckets=buckets)
    onnx_bytes = _read(location, ArtifactLayout.MODEL)
    verify_digest(hashlib.sha256(onnx_bytes).hexdigest(), desc.sha256, settings.expected_sha256)
    with _stage(f"{ArtifactLayout.MODEL} is not a model onnxruntime can load"):
        session = _session(onnx_bytes, settings)
    with _stage(f"{ArtifactLayout.MODEL} does not match {ArtifactLayout.METADATA}"):
        model = LoadedModel(
            desc=desc,
            session=session,
            fingerprint=fp,
            settings=settings,
            executor=executor,
            metrics=metrics,
        )
    with _stage(f"{ArtifactLayout.MODEL} failed its warm-up run"):
        model.warm_up()
    return model


def verify_digest(actual: str, described: str, registered: str | None) -> None:
    """model.onnx must hash to the registered digest (when one is set) and to the one
    its model.json describes."""
    if registered is not None and actual != registered:
        raise DigestMismatchError(
            f"{ArtifactLayout.MODEL} has sha256 {actual}, not the registered {registered}; "
            "refusing to serve it"
        )
    if actual != described:
        raise DigestMismatchError(
            f"{ArtifactLayout.MODEL} has sha256 {actual}, but {ArtifactLayout.METADATA} "
            f"says {described}; refusing to serve it"
        )


@contextlib.contextmanager
def _stage(public: str) -> Iterator[None]:
    """Any failure inside becomes an ArtifactError with ``public`` as its safe message."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(public, f"{public}: {exc}") from exc


def _session(onnx_bytes: bytes, settings: ServingSettings) -> ort.InferenceSession:
    return inference.new_session(onnx_bytes, settings.ort_threads)


def _read(location: str, name: str) -> bytes:
    with _stage(f"{name} cannot be read"):
        return read(location, name)


def _buckets_from(location: str) -> tuple[float, ...]:
    """The prediction-value buckets of the model at ``location`` (its profile.json), as
    that model's own server exports them: a canary reads its stable model's."""
    public = f"prediction_buckets_from: {ArtifactLayout.PROFILE} cannot be read or is not valid"
    with _stage(public):
        try:
            profile = read(location, ArtifactLayout.PROFILE)
        except FileNotFoundError:
            profile = None  # that model's server exports the default buckets too
        return art.value_buckets(profile)


def _read_optional(location: str, name: str) -> bytes | None:
    try:
        return read(location, name)
    except FileNotFoundError:
        log.warning("%s has no %s: drift monitoring is off", location, name)
        return None
