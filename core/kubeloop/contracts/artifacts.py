"""The files a snapshot, a trainer run and a serving pod agree on.

Imports only pydantic and the API types: the serving image (no scikit-learn,
no pandas) and the operator read these files through these models, and
:class:`ArtifactLayout` is the one place their names and paths are spelled.

A model directory holds:

- ``model.onnx`` — the fitted pipeline as ONNX. **Input convention**: one input
  per feature column, named after the column, shape ``[None, 1]``; numeric
  columns (number, integer, boolean) are ``FP32``, string/category columns are
  ``BYTES`` (ONNX ``string``). **Outputs** (:data:`OUTPUT_NAMES`):
  classification → ``label`` (``[None]``, the class as the training data had
  it) and ``probabilities`` (``[None, n_classes]`` FP32, columns in
  ``ModelMetadata.classes`` order); regression → ``variable`` (``[None, 1]``
  FP32).

  A model registered with ``kubeloop register`` may instead take every feature as
  one 2-D ``[N, F]`` float input (``ModelMetadata.packed_input``, columns in
  ``inputs`` order: the features clients name) and name its prediction outputs
  itself (``label_output``/``proba_output``); the server stacks the per-feature
  columns of a request into that tensor.

  A missing number is NaN. A missing text value is the string ``"missing"``:
  the trainer puts it in place of missing text before fitting, so it is a
  category of its own when training saw it, and an unseen one (ignored by the
  one-hot encoding) otherwise. Classification labels are integers or text:
  boolean targets become 0/1 and whole-number floats integers.
- ``model.json`` — :class:`ModelMetadata`.
- ``profile.json`` — :class:`Profile`, the reference distributions for drift.
- ``card.md`` — a human-readable model card.

A dataset snapshot directory (``<root>/<digest hex>/``, ``<root>/v2-<hex>/`` for a
``sha256-v2:`` digest) holds ``data.<format>``
and ``profile.json``.
"""

from __future__ import annotations

import bisect
import posixpath
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.api.v1alpha1 import Column, Comparison, TensorSpec
from kubeloop.contracts.frameworks import Task

FORMAT_VERSION = 1

#: The ONNX output holding the predicted class (classification).
LABEL_OUTPUT: Final = "label"
#: The ONNX output holding class probabilities (classification).
PROBA_OUTPUT: Final = "probabilities"
#: The ONNX output holding the predicted value (regression).
VALUE_OUTPUT: Final = "variable"
#: What stands for a missing text value in a model's inputs, in training and after it.
MISSING_TEXT: Final = "missing"
#: The outputs a trained model has, by task, in the order the converter emits them.
OUTPUT_NAMES: dict[Task, tuple[str, ...]] = {
    "classification": (LABEL_OUTPUT, PROBA_OUTPUT),
    "regression": (VALUE_OUTPUT,),
}


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with ``/`` (a trailing slash on ``base`` is ignored)."""
    return posixpath.join(base.rstrip("/"), *parts)


class ArtifactLayout:
    """Every file name and path the trainer writes and the operator and serving pods read."""

    MODEL: Final = "model.onnx"
    METADATA: Final = "model.json"
    PROFILE: Final = "profile.json"
    CARD: Final = "card.md"

    @staticmethod
    def data_file(fmt: str) -> str:
        """The name of a snapshot's copy of the data in format ``fmt``."""
        return f"data.{fmt}"

    @staticmethod
    def snapshot_dir(root: str, digest: str) -> str:
        """The content-addressed folder of the data version ``digest`` under ``root``:
        ``<hex>`` for a first-format digest (``sha256:``, so existing versions keep their
        folders), ``v<n>-<hex>`` for a later format (``sha256-v<n>:``)."""
        algorithm, _, hex_digest = digest.partition(":")
        if not hex_digest or algorithm == "sha256":
            return join(root, digest.removeprefix("sha256:"))
        return join(root, f"{algorithm.removeprefix('sha256-')}-{hex_digest}")

    @classmethod
    def snapshot_data(cls, root: str, digest: str, fmt: str) -> str:
        """The URI of the data file of version ``digest`` in format ``fmt``."""
        return join(cls.snapshot_dir(root, digest), cls.data_file(fmt))

    @staticmethod
    def model_dir(artifact_uri: str) -> str:
        """The model directory holding ``artifact_uri`` (a ``model.onnx``) and its siblings."""
        return posixpath.dirname(artifact_uri)

    @classmethod
    def sibling(cls, artifact_uri: str, name: str) -> str:
        """The file ``name`` next to the model artifact, e.g. its ``model.json``."""
        return join(cls.model_dir(artifact_uri), name)


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


class NativeImportance(_Model):
    """The training library's own feature importance, as shares of its total, per input
    column (a text column's one-hot columns summed); most important first."""

    kind: str = Field(description="What the library measured, e.g. 'total gain'.")
    values: dict[str, float] = Field(default_factory=dict)


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
    task: Task
    sha256: str = Field(description="sha256 of model.onnx, hex")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    packed_input: str | None = Field(
        None,
        description="The ONNX input taking every feature as one 2-D [N, F] tensor, columns "
        "in `inputs` order (a registered model); None: one input per feature",
    )
    label_output: str | None = Field(
        None, description="The output holding the prediction; None: the task's convention"
    )
    proba_output: str | None = Field(
        None, description="The output holding class probabilities; None: the task's convention"
    )
    columns: list[Column] = Field(default_factory=list)
    nullable: list[str] = Field(default_factory=list, description="inputs that may be missing")
    target: str
    classes: list[str] | list[int] | list[bool] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    parity: Parity | None = None
    importance: dict[str, float] = Field(default_factory=dict)
    native_importance: NativeImportance | None = None
    search: list[dict[str, Any]] | None = None
    gate: GateResult | None = None
    comparison: Comparison | None = None
    lineage: Lineage
    created: datetime


class GateResult(_Model):
    """The quality gate's verdict."""

    passed: bool
    failures: list[str] = Field(default_factory=list)


ModelMetadata.model_rebuild()
