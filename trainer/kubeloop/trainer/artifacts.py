"""The formats the trainer writes and everyone else reads.

Imports only pydantic and the API types: the serving image (no scikit-learn,
no pandas) and the operator read these files through these models.

A model directory holds:

- ``model.onnx`` — the fitted scikit-learn pipeline as ONNX. **Input
  convention**: one input per feature column, named after the column, shape
  ``[None, 1]``; numeric columns (number, integer, boolean) are ``FP32``,
  string/category columns are ``BYTES`` (ONNX ``string``). **Outputs**:
  classification → ``label`` (``[None]``, the class as the training data had
  it) and ``probabilities`` (``[None, n_classes]`` FP32, columns in
  ``ModelMetadata.classes`` order); regression → ``variable`` (``[None, 1]``
  FP32).

  A missing number is NaN. A missing text value is the string ``"missing"``:
  the trainer puts it in place of missing text before fitting, so it is a
  category of its own when training saw it, and an unseen one (ignored by the
  one-hot encoding) otherwise. Classification labels are integers or text:
  boolean targets become 0/1 and whole-number floats integers.
- ``model.json`` — :class:`ModelMetadata`.
- ``profile.json`` — :class:`Profile`, the reference distributions for drift.
- ``card.md`` — a human-readable model card.

A dataset snapshot directory holds ``data.<format>`` and ``profile.json``.
The trainer prints one :class:`Summary` line and writes it to the
termination-message file.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.api.v1alpha1 import Column, TensorSpec

MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
PROFILE_FILE = "profile.json"
CARD_FILE = "card.md"
FORMAT_VERSION = 1
#: Largest termination message Kubernetes keeps.
SUMMARY_LIMIT = 4096
#: Exit codes of `kubeloop snapshot` and `kubeloop train` besides 0: the run failed,
#: the input is bad (a retry cannot help), the quality gate rejected the model.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REJECTED = 3


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class NumericProfile(_Model):
    """Reference distribution of a numeric column.

    ``edges`` are ``len(counts) + 1`` ascending bin edges: the training
    minimum, the interior quantile cut points, the training maximum. Bin ``i``
    holds ``edges[i] <= x < edges[i + 1]`` (the last bin also holds its upper
    edge). Live values below ``edges[0]`` or above ``edges[-1]`` are counted in
    an underflow or overflow bin whose reference count is 0, so values never
    seen in training register as drift. Missing values are counted apart.
    """

    kind: Literal["numeric"] = "numeric"
    edges: list[float]
    counts: list[int]
    missing: int = 0

    def bin_index(self, value: float) -> int:
        """-1 below the first edge, ``len(counts)`` above the last, else the bin."""
        if value < self.edges[0]:
            return -1
        if value > self.edges[-1]:
            return len(self.counts)
        return min(bisect.bisect_right(self.edges, value) - 1, len(self.counts) - 1)


class CategoricalProfile(_Model):
    """Reference frequencies of a categorical column (values as strings)."""

    kind: Literal["categorical"] = "categorical"
    frequencies: dict[str, int]
    missing: int = 0

    def count(self, value: Any) -> int:
        """Reference count of ``value`` (0 for a category never seen)."""
        return self.frequencies.get(str(value), 0)


FeatureProfile = Annotated[NumericProfile | CategoricalProfile, Field(discriminator="kind")]


class Profile(_Model):
    """``profile.json``: reference distributions of features (and predictions)."""

    format_version: int = FORMAT_VERSION
    rows: int
    features: dict[str, FeatureProfile]
    prediction: FeatureProfile | None = None


class Parity(_Model):
    """How closely ONNX Runtime reproduced scikit-learn on the test split."""

    passed: bool
    rows: int
    label_mismatches: int = 0
    max_abs_diff: float = 0.0
    tolerance: float


class Lineage(_Model):
    """Where a model came from."""

    data_uri: str
    data_digest: str | None = None
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int
    libraries: dict[str, str] = Field(default_factory=dict)


class ModelMetadata(_Model):
    """``model.json``."""

    format_version: int = FORMAT_VERSION
    name: str
    task: Literal["classification", "regression"]
    sha256: str = Field(description="sha256 of model.onnx, hex")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    columns: list[Column] = Field(default_factory=list)
    nullable: list[str] = Field(default_factory=list, description="inputs that may be missing")
    target: str
    classes: list[str] | list[int] | list[bool] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    parity: Parity | None = None
    importance: dict[str, float] = Field(default_factory=dict)
    search: list[dict[str, Any]] | None = None
    gate: GateResult | None = None
    lineage: Lineage
    created: datetime


class GateResult(_Model):
    """The quality gate's verdict."""

    passed: bool
    failures: list[str] = Field(default_factory=list)


class Summary(_Model):
    """The one-line JSON result of ``kubeloop snapshot`` or ``kubeloop train``.

    Written to stdout and to the termination-message file; kept under 4 KiB.
    """

    kind: Literal["snapshot", "train"]
    status: Literal["succeeded", "rejected", "failed"]
    reason: str | None = None
    # snapshot
    digest: str | None = None
    rows: int | None = None
    columns: list[Column] | None = None
    snapshot_uri: str | None = None
    profile_uri: str | None = None
    # train
    artifact_uri: str | None = None
    sha256: str | None = None
    metadata_uri: str | None = None
    metrics: dict[str, float] | None = None
    gate: GateResult | None = None

    def to_line(self) -> str:
        """Compact JSON, trimmed to fit a termination message."""
        line = self.model_dump_json(exclude_none=True)
        if len(line.encode()) > SUMMARY_LIMIT and self.columns:
            line = self.model_copy(update={"columns": None}).model_dump_json(exclude_none=True)
        over = len(line.encode()) - SUMMARY_LIMIT
        if over > 0 and self.reason:
            keep = max(0, len(self.reason.encode()) - over - 16)
            reason = self.reason.encode()[:keep].decode(errors="ignore") + " ..."
            line = self.model_copy(update={"columns": None, "reason": reason}).model_dump_json(
                exclude_none=True
            )
        return line


ModelMetadata.model_rebuild()
