"""What the server needs to know about a model, read from the trainer's artifacts.

The formats are the core's contracts (:mod:`kubeloop.contracts.artifacts`, which
imports only pydantic and the API types); this module maps them onto the server's own
view: the feature list, the drift references and which outputs carry the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from kubeloop.contracts import artifacts as contract
from kubeloop.inference import Feature, features_of, outputs_of
from kubeloop.serving.drift import CategoricalReference, NumericReference, Reference

__all__ = ["Description", "describe", "value_buckets"]

#: default prediction-value histogram buckets when the profile has none (regression)
DEFAULT_VALUE_BUCKETS: tuple[float, ...] = (-100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class Description:
    name: str
    version: str
    sha256: str
    task: Literal["classification", "regression"]
    classes: list[Any] | None
    features: list[Feature]
    feature_references: list[Reference]
    prediction_reference: Reference | None
    label_output: str
    proba_output: str | None
    value_buckets: tuple[float, ...]
    #: the one 2-D input holding every feature (a registered model), else None
    packed_input: str | None = None


def _reference(name: str, prof: contract.NumericProfile | contract.CategoricalProfile) -> Reference:
    """The drift reference of one column (bucket layout as the profile documents it)."""
    if isinstance(prof, contract.NumericProfile):
        return NumericReference(
            name, edges=list(prof.edges), counts=list(prof.counts), missing=float(prof.missing)
        )
    freq = prof.frequencies
    return CategoricalReference(
        name, categories=list(freq), counts=[float(v) for v in freq.values()]
    )


def describe(meta_bytes: bytes, profile_bytes: bytes | None) -> Description:
    """Parse ``model.json`` (and ``profile.json`` when present) into a Description."""
    meta = contract.ModelMetadata.model_validate_json(meta_bytes)
    features = features_of(meta)
    refs: list[Reference] = []
    prediction: Reference | None = None
    value_buckets = DEFAULT_VALUE_BUCKETS
    if profile_bytes is not None:
        profile = contract.Profile.model_validate_json(profile_bytes)
        for f in features:
            prof = profile.features.get(f.name)
            if prof is not None:
                refs.append(_reference(f.name, prof))
        if profile.prediction is not None:
            prediction = _reference("prediction", profile.prediction)
        value_buckets = _buckets(profile)
    label_output, proba_output = outputs_of(meta)
    return Description(
        name=meta.name,
        version=meta.sha256[:12],
        sha256=meta.sha256,
        task=meta.task,
        classes=list(meta.classes) if meta.classes is not None else None,
        features=features,
        feature_references=refs,
        prediction_reference=prediction,
        label_output=label_output,
        proba_output=proba_output,
        value_buckets=value_buckets,
        packed_input=meta.packed_input,
    )


def value_buckets(profile_bytes: bytes | None) -> tuple[float, ...]:
    """The prediction-value histogram buckets a model with this ``profile.json`` exports
    (None: no profile): its numeric prediction edges, else the defaults. A canary
    buckets with its stable model's, so both histograms compare bucket by bucket."""
    if profile_bytes is None:
        return DEFAULT_VALUE_BUCKETS
    return _buckets(contract.Profile.model_validate_json(profile_bytes))


def _buckets(profile: contract.Profile) -> tuple[float, ...]:
    """The profile's numeric prediction edges, finite and strictly increasing (a
    histogram bucket per distinct edge), else the defaults."""
    prediction = profile.prediction
    if not isinstance(prediction, contract.NumericProfile):
        return DEFAULT_VALUE_BUCKETS
    edges = sorted({float(e) for e in prediction.edges if math.isfinite(e)})
    return tuple(edges) or DEFAULT_VALUE_BUCKETS
