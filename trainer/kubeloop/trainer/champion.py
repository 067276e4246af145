"""The champion of a champion/challenger gate: the model in use, read back from its ONNX file.

The champion is scored with ONNX Runtime on the challenger's own held-out rows,
taking the columns its graph names (one input per column, see
:mod:`kubeloop.contracts.artifacts`), so it needs nothing but ``model.onnx`` and,
for a classifier, the class order in its ``model.json``. :func:`passes` is the
pure decision; the training run composes the rest (:mod:`kubeloop.trainer.train`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
from pydantic import ValidationError

from kubeloop.api.v1alpha1 import LOWER_IS_BETTER, ChallengerScore, ChampionScore, Comparison
from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    OUTPUT_NAMES,
    PROBA_OUTPUT,
    ArtifactLayout,
    ModelMetadata,
    join,
)
from kubeloop.contracts.frameworks import Task
from kubeloop.trainer import model
from kubeloop.trainer.data import DataError

if TYPE_CHECKING:
    import onnxruntime as ort

#: Largest champion file read (model.onnx or model.json), in bytes.
MAX_CHAMPION_BYTES = 512 * 1024 * 1024
#: ONNX input types by how the trainer feeds them.
_NUMERIC_TYPES = {"tensor(float)", "tensor(double)"}
_TEXT_TYPES = {"tensor(string)"}
#: Slack for float rounding when a challenger sits exactly on the bound.
_EPSILON = 1e-12


@dataclass(frozen=True)
class ChampionRef:
    """Where the champion is: a model directory or its ``model.onnx``, and what it must be."""

    uri: str
    version: int | None = None
    sha256: str | None = None

    @property
    def onnx_uri(self) -> str:
        return self.uri if self.uri.endswith(".onnx") else join(self.uri, ArtifactLayout.MODEL)

    def describe(self) -> str:
        return f"champion v{self.version}" if self.version else f"champion {self.uri}"


@dataclass(frozen=True)
class Champion:
    """The champion's ONNX session, the columns it takes and (classification) its classes."""

    ref: ChampionRef
    session: ort.InferenceSession
    features: model.Features
    classes: list[Any]


def passes(metric: str, champion: float, challenger: float, tolerance: float) -> bool:
    """Whether the challenger is no worse than the champion by more than ``tolerance``."""
    if math.isnan(challenger):
        return False
    if math.isnan(champion):
        return True
    if metric in LOWER_IS_BETTER:
        return challenger <= champion + tolerance + _EPSILON
    return challenger >= champion - tolerance - _EPSILON


def verdict(
    ref: ChampionRef | None,
    metric: str,
    tolerance: float,
    champion: float | None,
    challenger: float | None,
) -> Comparison:
    """The comparison of two scores of ``metric`` on the same rows (no champion: a pass)."""
    mine = ChallengerScore(value=challenger) if challenger is not None else None
    base = {"metric": metric, "tolerance": tolerance, "challenger": mine}
    if ref is None:
        message = "no champion to compare with: the challenger passes"
        return Comparison(**base, passed=True, reason="NoChampion", message=message)
    theirs = score(ref, metric, champion)
    if champion is None or challenger is None:
        message = f"{metric} is not defined on the held-out rows for both models"
        return Comparison(**base, champion=theirs, passed=False, reason="Worse", message=message)
    ok = passes(metric, champion, challenger, tolerance)
    lower = metric in LOWER_IS_BETTER
    op = ("<=" if lower else ">=") if ok else (">" if lower else "<")
    sign = "+" if lower else "-"
    message = f"{metric} {challenger:.4f} {op} {ref.describe()} {champion:.4f} {sign} {tolerance:g}"
    return Comparison(
        **base,
        champion=theirs,
        passed=ok,
        reason="NotWorse" if ok else "Worse",
        message=message,
    )


def _read(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as handle:
            data: bytes = handle.read(MAX_CHAMPION_BYTES + 1)
    except (OSError, ImportError, ValueError) as exc:
        raise DataError(f"champion {uri}: cannot read it ({exc})") from exc
    if len(data) > MAX_CHAMPION_BYTES:
        raise DataError(f"champion {uri}: larger than {MAX_CHAMPION_BYTES} bytes")
    return data


def features_of(session: ort.InferenceSession, uri: str) -> model.Features:
    """The champion's columns from its graph inputs: numbers (float) and text (string)."""
    numeric, text = [], []
    for node in session.get_inputs():
        if node.type in _NUMERIC_TYPES:
            numeric.append(node.name)
        elif node.type in _TEXT_TYPES:
            text.append(node.name)
        else:
            raise DataError(f"champion {uri}: input {node.name!r} has type {node.type}")
    return model.Features(numeric=numeric, text=text)


def _classes(ref: ChampionRef, task: Task) -> list[Any]:
    """The champion's classes in probability-column order, from its ``model.json``."""
    if task == "regression":
        return []
    uri = ArtifactLayout.sibling(ref.onnx_uri, ArtifactLayout.METADATA)
    try:
        metadata = ModelMetadata.model_validate_json(_read(uri))
    except ValidationError as exc:
        raise DataError(f"champion {uri}: not a model.json ({exc.error_count()} errors)") from exc
    if metadata.task != task or not metadata.classes:
        raise DataError(f"champion {uri}: a {metadata.task} model, not a {task} one")
    return list(metadata.classes)


def load(ref: ChampionRef, task: Task) -> Champion:
    """Read and check the champion; a DataError says why it cannot be used."""
    onnx = _read(ref.onnx_uri)
    if ref.sha256 and hashlib.sha256(onnx).hexdigest() != ref.sha256:
        raise DataError(f"{ref.describe()}: {ref.onnx_uri} does not have the registered sha256")
    try:
        session = model.session(onnx)
    except Exception as exc:  # onnxruntime raises its own error types
        raise DataError(f"{ref.describe()}: {ref.onnx_uri} is not a usable ONNX model") from exc
    outputs = {node.name for node in session.get_outputs()}
    if not set(OUTPUT_NAMES[task]) <= outputs:
        raise DataError(
            f"{ref.describe()}: not a {task} model (its outputs: {', '.join(sorted(outputs))})"
        )
    return Champion(
        ref=ref,
        session=session,
        features=features_of(session, ref.onnx_uri),
        classes=_classes(ref, task),
    )


def schema_change(champion: Champion, frame: pd.DataFrame) -> str | None:
    """Why the new data cannot feed the champion (columns gone or no longer numbers), or None."""
    missing = [n for n in champion.features.all if n not in frame.columns]
    if missing:
        names = ", ".join(repr(n) for n in missing[:10])
        return f"{champion.ref.describe()} takes columns missing from the data: {names}"
    try:
        champion.features.prepare(frame)
    except (ValueError, TypeError):
        bad = [n for n in champion.features.numeric if not _numeric(frame[n])]
        return f"{champion.ref.describe()} takes numbers in columns that are no longer: {bad}"
    return None


def _numeric(series: pd.Series[Any]) -> bool:
    try:
        series.astype("float32")
    except (ValueError, TypeError):
        return False
    return True


def predict(
    champion: Champion, frame: pd.DataFrame, y: pd.Series[Any]
) -> tuple[dict[str, np.ndarray[Any, Any]], list[Any]]:
    """The champion's outputs on ``frame`` and its classes, widened by labels it never saw
    (probability 0), so every metric is defined on the new data."""
    outputs = model.onnx_predict(
        champion.session, champion.features, champion.features.prepare(frame)
    )
    if not champion.classes:
        return outputs, []
    known = {str(c) for c in champion.classes}
    unseen = [c for c in pd.unique(y) if str(c) not in known]
    if not unseen:
        return outputs, champion.classes
    proba = outputs[PROBA_OUTPUT]
    padded = np.hstack([proba, np.zeros((proba.shape[0], len(unseen)), dtype=proba.dtype)])
    classes = [*champion.classes, *(_plain(c) for c in unseen)]
    return {LABEL_OUTPUT: outputs[LABEL_OUTPUT], PROBA_OUTPUT: padded}, classes


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def score(ref: ChampionRef, metric: str, value: float | None) -> ChampionScore:
    """The champion's part of a comparison."""
    return ChampionScore(version=ref.version, uri=ref.uri, metric=metric, value=value)


def schema_changed(ref: ChampionRef, metric: str, tolerance: float, why: str) -> Comparison:
    """A failed comparison: the champion cannot read the new data."""
    return Comparison(
        metric=metric,
        tolerance=tolerance,
        champion=score(ref, metric, None),
        passed=False,
        reason="SchemaChanged",
        message=why,
    )
