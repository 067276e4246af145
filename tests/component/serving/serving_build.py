"""Fallback test-model builder (scikit-learn + skl2onnx) used only while
``kubeloop train`` is not available; artifacts are written through the trainer's
typed models."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd


def build(data: Path, target: str, task: str, estimator: str, out: Path, params: dict) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn import ensemble, linear_model
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from kubeloop.trainer import artifacts as a

    df = pd.read_csv(data)
    y = df.pop(target)
    cat = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    num = [c for c in df.columns if c not in cat]
    df[num] = df[num].astype(np.float32)
    est_cls = getattr(linear_model, estimator, None) or getattr(ensemble, estimator)
    pre = ColumnTransformer(
        [("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), num)]
        + ([("cat", OneHotEncoder(handle_unknown="ignore"), cat)] if cat else [])
    )
    pipe = Pipeline([("pre", pre), ("est", est_cls(**params))]).fit(df, y)
    init = [
        (c, StringTensorType([None, 1]) if c in cat else FloatTensorType([None, 1]))
        for c in df.columns
    ]
    options = {id(pipe.steps[-1][1]): {"zipmap": False}} if task == "classification" else None
    onx = convert_sklearn(pipe, initial_types=init, options=options, target_opset=17)
    blob = onx.SerializeToString()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(blob)
    classes = pipe.classes_.tolist() if task == "classification" else None
    if task == "classification":
        label_type = "BYTES" if isinstance(classes[0], str) else "INT64"
        outputs = [
            a.TensorSpec(name="label", datatype=label_type, shape=[-1]),
            a.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(classes)]),
        ]
    else:
        outputs = [a.TensorSpec(name="variable", datatype="FP32", shape=[-1, 1])]
    meta = a.ModelMetadata(
        name=out.name.split("_")[0] if "_" in out.name else out.name,
        task=task,
        sha256=hashlib.sha256(blob).hexdigest(),
        inputs=[
            a.TensorSpec(name=c, datatype="BYTES" if c in cat else "FP32", shape=[-1, 1])
            for c in df.columns
        ],
        outputs=outputs,
        classes=classes,
        nullable=[c for c in df.columns if df[c].isna().any()],
        target=target,
        lineage=a.Lineage(data_uri=str(data), estimator=estimator, params=params, seed=0),
        created=datetime.now(UTC),
    )
    (out / "model.json").write_text(meta.model_dump_json())
    features = {}
    for c in df.columns:
        col = df[c]
        if c in cat:
            features[c] = a.CategoricalProfile(
                frequencies={str(k): int(v) for k, v in col.value_counts().items()}
            )
        else:
            vals = col.dropna().to_numpy()
            edges = np.unique(np.quantile(vals, np.linspace(0, 1, 11)))
            if len(edges) < 2:
                edges = np.array([edges[0], edges[0] + 1])
            counts, _ = np.histogram(vals, bins=edges)
            features[c] = a.NumericProfile(
                edges=edges.tolist(), counts=counts.tolist(), missing=int(col.isna().sum())
            )
    pred = pipe.predict(df)
    if task == "classification":
        prediction = a.CategoricalProfile(
            frequencies={str(k): int(v) for k, v in pd.Series(pred).value_counts().items()}
        )
    else:
        edges = np.unique(np.quantile(pred, np.linspace(0, 1, 11)))
        counts, _ = np.histogram(pred, bins=edges)
        prediction = a.NumericProfile(edges=edges.tolist(), counts=counts.tolist())
    (out / "profile.json").write_text(
        a.Profile(rows=len(df), features=features, prediction=prediction).model_dump_json()
    )
    return out
