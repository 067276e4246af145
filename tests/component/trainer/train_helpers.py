"""Helpers of the trainer tests: `kubeloop train` arguments and reading a model directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata, Profile


def flags(
    data: Path,
    out: Path,
    *extra: str,
    file: str = "cancer.csv",
    target: str = "target",
    task: str = "classification",
    estimator: str = "LogisticRegression",
    params: str = '{"max_iter": 500}',
) -> list[str]:
    """`kubeloop train` with flags (no spec) on ``data/file``; ``extra`` goes last."""
    return [
        "train",
        "--data",
        str(data / file),
        "--target",
        target,
        "--task",
        task,
        "--estimator",
        estimator,
        "--params",
        params,
        "--out",
        str(out),
        *extra,
    ]


def metadata_of(out: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((out / ArtifactLayout.METADATA).read_text())


def profile_of(out: Path) -> Profile:
    return Profile.model_validate_json((out / ArtifactLayout.PROFILE).read_text())


def predict(out: Path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """onnxruntime alone, fed by the input convention in model.json."""
    meta = metadata_of(out)
    sess = ort.InferenceSession(str(out / ArtifactLayout.MODEL), providers=["CPUExecutionProvider"])
    feeds = {
        t.name: frame[t.name]
        .to_numpy(np.float32 if t.datatype == "FP32" else object)
        .reshape(-1, 1)
        for t in meta.inputs
    }
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
