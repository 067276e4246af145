"""The ``kubeloop.io/v1alpha1`` API: Dataset, TrainingJob, ModelVersion, ModelDeployment,
BatchPrediction.

Field names are snake_case in Python and camelCase on the wire. Every field's
description becomes the CRD's description, so ``kubectl explain`` shows it.
"""

from __future__ import annotations

import re
import typing
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kubeloop.api.base import (
    DNSLabel,
    DNSSubdomain,
    Duration,
    FreeForm,
    KubeModel,
    ObjectMeta,
    ResourceRequirements,
    Rule,
    StatusBase,
)
from kubeloop.contracts.frameworks import ESTIMATORS, Task
from kubeloop.contracts.routing import STICKY_HEADER_PATTERN

#: Metrics the trainer reports on the held-out split, by task (gate and search keys).
METRICS: dict[Task, tuple[str, ...]] = {
    "classification": ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}

ColumnType = Literal["number", "integer", "string", "boolean", "category"]
Datatype = Literal["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]
SHA256_HEX = r"^[a-f0-9]{64}$"
DATA_VERSION = r"^sha256(-v2)?:[a-f0-9]{64}$"


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


# --------------------------------------------------------------------------- Dataset


#: Longest SQL query a Dataset may hold (it travels in the snapshot Job's arguments).
MAX_QUERY_LENGTH = 16384
#: The Secret key syntax Kubernetes allows.
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"


class SecretKeyRef(KubeModel):
    """One key of a Secret in the Dataset's namespace."""

    name: DNSSubdomain = Field(description="The Secret's name.")
    key: str = Field(
        min_length=1, max_length=253, pattern=SECRET_KEY, description="The key within the Secret."
    )


class SecretRef(KubeModel):
    """A Secret in the same namespace, by name."""

    name: DNSSubdomain = Field(description="The Secret's name.")


class SqlSource(KubeModel):
    """A PostgreSQL query whose result is the data set."""

    url_secret_ref: SecretKeyRef = Field(
        description="A Secret key holding the database URL, postgresql://user:password@host:"
        "port/db (password included). The snapshot Job gets it as an environment variable; "
        "the operator never reads it."
    )
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_LENGTH,
        description="One SELECT. The snapshot runs SELECT * FROM (<query>) s ORDER BY every "
        "column, read-only, so the same rows always give the same data version.",
    )


#: How far back a feedback source reads the prediction log unless told otherwise.
DEFAULT_FEEDBACK_MAX_AGE = "720h"
#: Bytes of prediction log lines a feedback source keeps unless told otherwise.
DEFAULT_FEEDBACK_MAX_BYTES = 256 * 1024**2


class DeploymentRef(KubeModel):
    """A ModelDeployment in the same namespace, by name."""

    name: DNSLabel = Field(description="The ModelDeployment's name.")


class FeedbackSource(KubeModel):
    """A ModelDeployment's prediction log joined to the feedback its pods accepted."""

    deployment_ref: DeploymentRef = Field(
        description="The deployment whose prediction log is read: its spec.predictionLog must "
        "have sink pvc and includeInputs true. The snapshot Job mounts that claim read-only."
    )
    max_age: Duration = Field(
        DEFAULT_FEEDBACK_MAX_AGE,
        description="Predictions older than this are left out (default 720h, 30 days).",
    )
    max_bytes: int = Field(
        DEFAULT_FEEDBACK_MAX_BYTES,
        ge=1024,
        le=1024**4,
        description="Of the labelled predictions, the newest are kept while their log lines "
        "add up to at most this many bytes (default 256 MiB). The snapshot Job holds the rows "
        "kept: give it about twice this much memory, besides ~250 MiB.",
    )
    version_column: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="Also a column of this name holding the model version that answered "
        "(default: none). Name the TrainingJob's features when it is set: the version is no "
        "feature.",
    )


def _one_source(s: DataSource) -> bool:
    return sum(x is not None for x in (s.path, s.uri, s.sql, s.feedback)) == 1


def _secret_with_uri(s: DataSource) -> bool:
    return s.secret_ref is None or s.uri is not None


class DataSource(KubeModel):
    """Where the data lives: exactly one of a path, a URI, a SQL query or a deployment's
    feedback."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(has(self.path) ? 1 : 0) + (has(self.uri) ? 1 : 0) + (has(self.sql) ? 1 : 0) "
            "+ (has(self.feedback) ? 1 : 0) == 1",
            message="exactly one of source.path, source.uri, source.sql or source.feedback "
            "must be set",
            check=_one_source,
        ),
        Rule(
            cel="!has(self.secretRef) || has(self.uri)",
            message="source.secretRef goes with source.uri (an object store); a SQL source "
            "names its Secret in sql.urlSecretRef",
            check=_secret_with_uri,
        ),
    )

    path: str | None = Field(
        None, min_length=1, description="A file path inside the snapshot pod (a mounted PVC)."
    )
    uri: str | None = Field(
        None,
        min_length=1,
        description="An fsspec URI: file://, http(s)://, s3://, gs://, az://.",
    )
    sql: SqlSource | None = Field(
        None, description="A PostgreSQL query; its snapshot is stored as Parquet."
    )
    feedback: FeedbackSource | None = Field(
        None,
        description="A ModelDeployment's logged predictions joined to their feedback labels "
        "by request id: the input features and the label (as spec.target); stored as Parquet.",
    )
    secret_ref: SecretRef | None = Field(
        None,
        description="A Secret with the credentials of the uri's object store, under the "
        "standard keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
        "AWS_REGION, AWS_ENDPOINT_URL; AZURE_STORAGE_*); each key optional. The snapshot Job "
        "gets them as environment variables; the operator never reads them. Default: the "
        "artifact store's credentials, or the pod's ambient identity.",
    )


class Column(KubeModel):
    """One column of a tabular data set."""

    name: str = Field(min_length=1, description="Column name as it appears in the data.")
    type: ColumnType = Field(description="number, integer, string, boolean or category.")
    nullable: bool = Field(False, description="Whether missing values are allowed.")


class DataSchema(KubeModel):
    """The columns a data set must have."""

    columns: list[Column] = Field(
        min_length=1,
        description="Expected columns; extra columns in the data are kept.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    max_null_fraction: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Largest share of missing values tolerated in a nullable column "
        "(default: any).",
    )


class SnapshotRetention(KubeModel):
    """How many snapshots of a Dataset the store keeps."""

    keep_snapshots: int = Field(
        ge=1,
        le=100,
        description="Keep the newest N snapshots, the current one and every one a "
        "ModelVersion's lineage names; older ones are deleted from the store (by a Job) "
        "and leave status.history.",
    )


def _feedback_has_target(s: DatasetSpec) -> bool:
    return s.source.feedback is None or s.target is not None


def _version_column_not_target(s: DatasetSpec) -> bool:
    fb = s.source.feedback
    return fb is None or fb.version_column is None or fb.version_column != s.target


class DatasetSpec(KubeModel):
    """A tabular data source and what it must look like."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.source.feedback) || has(self.target)",
            message="source.feedback needs target: the column the feedback labels go to",
            check=_feedback_has_target,
            field_path=".target",
        ),
        Rule(
            cel="!has(self.source.feedback) || !has(self.source.feedback.versionColumn) || "
            "!has(self.target) || self.source.feedback.versionColumn != self.target",
            message="source.feedback.versionColumn must differ from target",
            check=_version_column_not_target,
            field_path=".source.feedback.versionColumn",
        ),
    )

    source: DataSource = Field(description="Where to read the data from.")
    format: Literal["csv", "parquet", "jsonl"] = Field(
        "csv", description="File format of a path or URI (a SQL source is stored as Parquet)."
    )
    data_schema: DataSchema | None = Field(
        None, alias="schema", description="Expected columns; the snapshot fails on mismatch."
    )
    target: str | None = Field(None, description="The label column, if the data has one.")
    retention: SnapshotRetention | None = Field(
        None,
        description="Delete old snapshots from the store (default: keep them; status lists "
        "the newest 10).",
    )
    refresh_interval: Duration | None = Field(
        None, description="Re-snapshot this often; a changed digest becomes a new version."
    )

    @property
    def snapshot_format(self) -> Literal["csv", "parquet", "jsonl"]:
        """The format of the snapshot's copy: ``format``, except Parquet for a SQL or a
        feedback source."""
        table = self.source.sql is not None or self.source.feedback is not None
        return "parquet" if table else self.format


class DatasetVersion(KubeModel):
    """One snapshot in a Dataset's history."""

    model_config = ConfigDict(extra="ignore")

    version: str = Field(
        description="Content digest, sha256-v2:<hex> (sha256:<hex> from earlier releases)."
    )
    rows: int = Field(ge=0, description="Row count.")
    time: datetime = Field(description="When the snapshot was taken.")
    snapshot_uri: str | None = Field(None, description="Immutable copy of this version.")


class SnapshotOutcome(KubeModel):
    """How the latest finished snapshot Job ended, and which request it served."""

    model_config = ConfigDict(extra="ignore")

    time: datetime = Field(description="When its result was recorded.")
    request: datetime | None = Field(
        None, description="The snapshot request (annotation) outstanding when the Job started."
    )
    succeeded: bool = Field(description="Whether the snapshot succeeded.")
    digest: str | None = Field(None, description="The content digest it found.")
    changed: bool | None = Field(
        None, description="Whether that digest differs from the version current before it."
    )
    message: str | None = Field(None, description="Why it failed.")


class DatasetStatus(StatusBase):
    """What the last snapshot found."""

    version: str | None = Field(
        None, description="Content digest of the current snapshot (the data version)."
    )
    rows: int | None = Field(None, ge=0, description="Rows in the current snapshot.")
    columns: int | None = Field(None, ge=0, description="Columns in the current snapshot.")
    inferred_schema: list[Column] | None = Field(None, description="Columns as found.")
    snapshot_uri: str | None = Field(None, description="Immutable copy of the data.")
    profile_uri: str | None = Field(None, description="Reference profile (profile.json).")
    last_snapshot_time: datetime | None = Field(None, description="When it was taken.")
    snapshot_job: str | None = Field(None, description="The latest snapshot Job.")
    observed_snapshot_job: str | None = Field(
        None, description="The latest snapshot Job whose result is recorded here."
    )
    history: list[DatasetVersion] = Field(
        default_factory=list, description="Recent versions, newest first."
    )
    snapshot_request: datetime | None = Field(
        None, description="The snapshot request the latest snapshot Job serves."
    )
    refresh_snapshot_job: str | None = Field(
        None, description="The snapshot Job of the latest refresh round (not a request's)."
    )
    last_snapshot: SnapshotOutcome | None = Field(
        None, description="How the latest finished snapshot Job ended (changed or not)."
    )


# ----------------------------------------------------------------------- TrainingJob


#: How long a fresh run waits for its snapshot when datasetRef.freshTimeout is unset.
DEFAULT_FRESH_TIMEOUT = "30m"


def _fresh_not_pinned(ref: DatasetRef) -> bool:
    return not (ref.fresh and ref.version is not None)


class DatasetRef(KubeModel):
    """A Dataset, optionally at one exact version, or at a snapshot taken for this run."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(has(self.version) && has(self.fresh) && self.fresh)",
            message="datasetRef.fresh and datasetRef.version exclude each other",
            check=_fresh_not_pinned,
            field_path=".fresh",
        ),
    )

    name: DNSLabel = Field(description="Name of a Dataset in the same namespace.")
    version: str | None = Field(
        None,
        pattern=DATA_VERSION,
        description=(
            "Pin a data version (sha256-v2:<hex>, or sha256:<hex>); default: the Dataset's "
            "current one."
        ),
    )
    fresh: bool | None = Field(
        None,
        description=(
            "Train on a snapshot taken after this TrainingJob was created: request one on the "
            "Dataset and wait for it. A retrain template without version or fresh gets "
            "fresh: true; fresh: false there takes the Dataset's newest version."
        ),
    )
    fresh_timeout: Duration | None = Field(
        None,
        description="With fresh: fail when no snapshot arrives within this long (default 30m).",
    )


class Estimator(KubeModel):
    """An allow-listed estimator (scikit-learn, XGBoost or LightGBM) and its constructor
    parameters."""

    class_name: str = Field(
        description=(
            "Estimator class, e.g. RandomForestClassifier, XGBClassifier or LGBMRegressor "
            "(see the allow-list)."
        )
    )
    params: FreeForm | None = Field(
        None, description="Constructor keyword arguments, e.g. {n_estimators: 100}."
    )


class Split(KubeModel):
    """How the held-out evaluation split is drawn."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.testFraction > 0.0 && self.testFraction < 1.0",
            message="testFraction must be greater than 0 and less than 1",
            check=lambda s: 0.0 < s.test_fraction < 1.0,
            field_path=".testFraction",
        ),
    )

    test_fraction: float = Field(0.2, description="Share of rows held out for evaluation.")
    seed: int = Field(42, ge=0, description="Random seed for the split and the estimator.")


class Sampling(KubeModel):
    """Train on a sample of a large Dataset: rows reservoir-sampled while the data streams
    (per class for classification, so class shares are kept), the same rows for the same
    seed."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.maxRows >= 1",
            message="maxRows must be at least 1",
            check=lambda s: s.max_rows >= 1,
            field_path=".maxRows",
        ),
    )

    max_rows: int = Field(description="Most rows to train and evaluate on.")
    seed: int = Field(0, ge=0, description="Seed of the sample.")


#: Most pods one search runs its trials on.
MAX_SEARCH_PARALLELISM = 100


class Search(KubeModel):
    """Hyper-parameter search with cross-validation."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"!has(self.parallelism) || (self.parallelism >= 1 && "
            f"self.parallelism <= {MAX_SEARCH_PARALLELISM})",
            message=f"parallelism must be between 1 and {MAX_SEARCH_PARALLELISM}",
            check=lambda s: s.parallelism is None or 1 <= s.parallelism <= MAX_SEARCH_PARALLELISM,
            field_path=".parallelism",
        ),
    )

    strategy: Literal["grid", "random"] = Field("grid", description="grid or random.")
    space: dict[str, list[Any]] = Field(
        description="Candidate values per estimator parameter, e.g. {max_depth: [3, 5, 8]}.",
        json_schema_extra={
            "additionalProperties": {
                "type": "array",
                "items": {"x-kubernetes-preserve-unknown-fields": True},
            }
        },
    )
    trials: int = Field(10, ge=1, le=1000, description="Candidates tried by random search.")
    cv: int = Field(3, ge=2, le=20, description="Cross-validation folds.")
    metric: str | None = Field(
        None, description="Metric to optimise; default accuracy or r2 by task."
    )
    parallelism: int | None = Field(
        None,
        description="Run the trials on this many pods (an Indexed Job, each pod a share of "
        "the candidates, trials written to the store), then retrain the winner once; "
        "default: every trial in the trainer's own process.",
    )


#: Every metric any task reports (the champion comparison's allowed set).
ALL_METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for ms in METRICS.values() for m in ms))
#: Metrics where a smaller value is a better model.
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "rmse", "mae"})
#: The tolerance of a champion comparison unless the spec gives one.
DEFAULT_TOLERANCE = 0.01
ComparePolicy = Literal["Serving", "Version", "None"]
#: the outcome of one canary-analysis check
CheckOutcome = Literal["Pass", "Fail", "NoData"]


class CompareTo(KubeModel):
    """The champion the new model (the challenger) must not be worse than."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.policy == 'Version') == has(self.version)",
            message="gate.compareTo.version must be set exactly when gate.compareTo.policy is "
            "Version",
            check=lambda c: (c.policy == "Version") == (c.version is not None),
            field_path=".version",
        ),
        Rule(
            cel="!has(self.tolerance) || self.tolerance >= 0.0",
            message="gate.compareTo.tolerance must be at least 0",
            check=lambda c: c.tolerance >= 0,
            field_path=".tolerance",
        ),
        Rule(
            cel=f"!has(self.metric) || self.metric in {_cel_list(ALL_METRICS)}",
            message=f"gate.compareTo.metric must be one of {', '.join(ALL_METRICS)}",
            check=lambda c: c.metric is None or c.metric in ALL_METRICS,
            field_path=".metric",
        ),
    )

    policy: ComparePolicy = Field(
        description="Serving: the stable version of the ModelDeployment named by the "
        "TrainingJob's kubeloop.io/model-deployment label; Version: one version of this model; "
        "None: no comparison."
    )
    version: int | None = Field(
        None, ge=1, description="The champion's version number (policy Version only)."
    )
    metric: str | None = Field(
        None,
        description="Metric compared on the held-out split; default: the search metric, else "
        "accuracy (classification) or r2 (regression).",
    )
    tolerance: float = Field(
        DEFAULT_TOLERANCE,
        description="How much worse than the champion the challenger may be and still pass.",
    )


class Gate(KubeModel):
    """Quality thresholds a model must meet on the held-out split to be published."""

    min: dict[str, float] | None = Field(
        None, description="Metrics that must be at least this, e.g. {f1: 0.9}."
    )
    max: dict[str, float] | None = Field(
        None, description="Metrics that must be at most this, e.g. {rmse: 3.5}."
    )
    compare_to: CompareTo | None = Field(
        None,
        description="Champion/challenger: the new model must score no worse than the "
        "champion, on the same held-out rows, by more than a tolerance.",
    )


def compare_metric(spec: TrainingJobSpec) -> str:
    """The metric a champion comparison uses: the spec's, the search's, or the task's default."""
    compare = spec.gate.compare_to if spec.gate else None
    if compare is not None and compare.metric:
        return compare.metric
    if spec.search is not None and spec.search.metric:
        return spec.search.metric
    return "accuracy" if spec.task == "classification" else "r2"


def _compare_metric_matches_task(spec: TrainingJobSpec) -> bool:
    compare = spec.gate.compare_to if spec.gate else None
    return compare is None or compare.metric is None or compare.metric in METRICS[spec.task]


class ChampionScore(KubeModel):
    """The champion's score on the challenger's held-out rows."""

    version: int | None = Field(None, ge=1, description="The champion's version number.")
    uri: str | None = Field(None, description="The champion's model directory or model.onnx.")
    metric: str = Field(description="The metric compared.")
    value: float | None = Field(None, description="Its value (none when it could not be scored).")


class ChallengerScore(KubeModel):
    """The new model's score on the same rows."""

    value: float = Field(description="Its value of the compared metric.")


class Comparison(KubeModel):
    """The champion/challenger verdict, as the trainer reported it."""

    metric: str = Field(description="The metric compared.")
    tolerance: float = Field(ge=0, description="How much worse the challenger may be.")
    champion: ChampionScore | None = Field(None, description="None: there was no champion.")
    challenger: ChallengerScore | None = Field(None, description="The new model's score.")
    passed: bool = Field(description="Whether the challenger passed.")
    reason: Literal["NoChampion", "NotWorse", "Worse", "SchemaChanged"] = Field(
        description="NoChampion (passes), NotWorse (passes), Worse or SchemaChanged (fail)."
    )
    message: str = Field("", description="The comparison in words.")


def _estimator_matches_task(spec: TrainingJobSpec) -> bool:
    return spec.estimator.class_name in ESTIMATORS[spec.task]


class TrainingJobSpec(KubeModel):
    """Train one model on one Dataset version."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                "self.task == 'classification' ? "
                f"self.estimator.className in {_cel_list(ESTIMATORS['classification'])} : "
                f"self.estimator.className in {_cel_list(ESTIMATORS['regression'])}"
            ),
            message=(
                "estimator.className must name an allow-listed estimator for the "
                f"task (classification: {', '.join(ESTIMATORS['classification'])}; "
                f"regression: {', '.join(ESTIMATORS['regression'])})"
            ),
            check=_estimator_matches_task,
            field_path=".estimator.className",
        ),
        Rule(
            cel=(
                "!has(self.gate) || !has(self.gate.compareTo) || "
                "!has(self.gate.compareTo.metric) || (self.task == 'classification' ? "
                f"self.gate.compareTo.metric in {_cel_list(METRICS['classification'])} : "
                f"self.gate.compareTo.metric in {_cel_list(METRICS['regression'])})"
            ),
            message=(
                "gate.compareTo.metric must be a metric of the task (classification: "
                f"{', '.join(METRICS['classification'])}; "
                f"regression: {', '.join(METRICS['regression'])})"
            ),
            check=_compare_metric_matches_task,
            field_path=".gate.compareTo.metric",
        ),
    )

    dataset_ref: DatasetRef = Field(description="The Dataset to train on.")
    task: Task = Field(description="classification or regression.")
    target: str = Field(min_length=1, description="The label column.")
    features: list[str] | None = Field(
        None, description="Feature columns; default: every column but the target."
    )
    estimator: Estimator = Field(description="What to fit.")
    split: Split = Field(default_factory=Split, description="Held-out split.")
    sampling: Sampling | None = Field(
        None, description="Train on a sample of at most maxRows rows; default: every row."
    )
    search: Search | None = Field(None, description="Optional hyper-parameter search.")
    gate: Gate | None = Field(None, description="Optional quality gate.")
    model_name: DNSLabel = Field(
        description="The model this run produces a new version of (ModelVersion.spec.modelName)."
    )
    resources: ResourceRequirements | None = Field(
        None, description="Resources of the trainer container."
    )
    backoff_limit: int = Field(1, ge=0, le=10, description="Retries of the trainer Job.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Give up when the run takes longer than this."
    )
    image: str | None = Field(None, description="Trainer image; default: the operator's.")


class SearchWinner(KubeModel):
    """The best candidate of a search across pods."""

    index: int = Field(ge=0, description="Its place in the search's candidate list.")
    score: float | None = Field(None, description="Its mean cross-validated value of the metric.")
    params: FreeForm = Field(description="Its values of the searched parameters.")


class SearchStatus(KubeModel):
    """A search across pods: how far it is and, once every trial is in, the winner."""

    job_name: str = Field(description="The search's Indexed Job.")
    pods: int = Field(ge=1, description="Pods the trials are shared among.")
    trials: int = Field(ge=0, description="Candidates the search tries.")
    done: int = Field(0, ge=0, description="Trials whose results are in the store.")
    metric: str | None = Field(None, description="The metric the trials are ranked by.")
    winner: SearchWinner | None = Field(
        None, description="The best trial, once every trial is in: the model trained next."
    )


class TrainingJobStatus(StatusBase):
    """Progress and outcome of the run."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Rejected"] | None = Field(
        None, description="Pending, Running, Succeeded, Failed or Rejected (by the gate)."
    )
    job_name: str | None = Field(None, description="The trainer batch/v1 Job.")
    dataset_version: str | None = Field(None, description="The data version trained on.")
    snapshot_requested: datetime | None = Field(
        None, description="With datasetRef.fresh: the snapshot request this run waits on."
    )
    start_time: datetime | None = Field(None, description="When the trainer started.")
    completion_time: datetime | None = Field(None, description="When it finished.")
    metrics: dict[str, float] | None = Field(None, description="Held-out metrics.")
    model_version: str | None = Field(None, description="The ModelVersion created.")
    version: int | None = Field(None, ge=1, description="Its version number.")
    reason: str | None = Field(None, description="Why it failed or was rejected.")
    comparison: Comparison | None = Field(
        None, description="The champion/challenger comparison, when the gate asked for one."
    )
    search: SearchStatus | None = Field(
        None, description="A search across pods (spec.search.parallelism): its progress and winner."
    )


# ---------------------------------------------------------------------- ModelVersion


class Artifact(KubeModel):
    """Where the ONNX model is and what it hashes to."""

    uri: str = Field(min_length=1, description="URI of model.onnx (file://, s3://, ...).")
    sha256: str = Field(pattern=SHA256_HEX, description="sha256 of model.onnx, hex.")


class TensorSpec(KubeModel):
    """One named input or output tensor, as in Open Inference Protocol metadata."""

    name: str = Field(min_length=1, description="Tensor (feature) name.")
    datatype: Datatype = Field(description="OIP datatype: FP32, FP64, INT32, INT64, BOOL, BYTES.")
    shape: list[int] = Field(description="Shape; -1 for a variable dimension.")


class Lineage(KubeModel):
    """Where a model came from."""

    dataset: str | None = Field(None, description="Dataset name.")
    dataset_version: str | None = Field(None, description="Data version trained on.")
    training_job: str | None = Field(None, description="TrainingJob name.")
    image: str | None = Field(None, description="Trainer image.")
    params: FreeForm | None = Field(None, description="Estimator parameters used.")


class ModelVersionSpec(KubeModel):
    """One immutable trained model."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self == oldSelf", message="ModelVersion spec is immutable; create a new version"),
    )

    model_name: DNSLabel = Field(description="The model this is a version of.")
    version: int = Field(ge=1, description="Version number, unique per modelName.")
    task: Task = Field(description="classification or regression.")
    artifact: Artifact = Field(description="The ONNX artifact.")
    inputs: list[TensorSpec] = Field(
        default_factory=list, max_length=1024, description="Input tensors the model takes."
    )
    outputs: list[TensorSpec] = Field(
        default_factory=list, max_length=64, description="Output tensors the model returns."
    )
    metrics: dict[str, float] | None = Field(None, description="Held-out metrics.")
    lineage: Lineage | None = Field(None, description="Data, job, image and params.")
    profile_uri: str | None = Field(None, description="Reference profile (profile.json) for drift.")
    comparison: Comparison | None = Field(
        None, description="How it compared with the champion when it was trained."
    )


class ModelVersionStatus(StatusBase):
    """Whether the artifact was found and verified."""

    verified_sha256: str | None = Field(None, description="Digest the operator computed.")
    inputs: list[TensorSpec] | None = Field(
        None,
        max_length=1024,
        description="Input tensors read from the ONNX graph, when spec names none.",
    )
    outputs: list[TensorSpec] | None = Field(
        None,
        max_length=64,
        description="Output tensors read from the ONNX graph, when spec names none.",
    )


# ------------------------------------------------------------------- ModelDeployment


class VersionPolicy(KubeModel):
    """Which ModelVersion to serve."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.policy == 'Pinned' ? has(self.pinned) : !has(self.pinned)",
            message="version.pinned must be set exactly when version.policy is Pinned",
            check=lambda s: (s.policy == "Pinned") == (s.pinned is not None),
            field_path=".pinned",
        ),
        Rule(
            cel="!has(self.pinned) || self.pinned >= 1",
            message="version.pinned must be at least 1",
            check=lambda s: s.pinned is None or s.pinned >= 1,
            field_path=".pinned",
        ),
    )

    policy: Literal["Latest", "Pinned"] = Field(
        "Latest", description="Latest follows the newest Ready version; Pinned serves one."
    )
    pinned: int | None = Field(None, description="The version to serve when Pinned.")


class Autoscaling(KubeModel):
    """A HorizontalPodAutoscaler for the stable pods."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.maxReplicas >= self.minReplicas",
            message="autoscaling.maxReplicas must be at least minReplicas",
            check=lambda s: s.max_replicas >= s.min_replicas,
            field_path=".maxReplicas",
        ),
    )

    min_replicas: int = Field(1, ge=1, description="Fewest pods.")
    max_replicas: int = Field(ge=1, description="Most pods.")
    target_cpu_utilization: int = Field(
        80, ge=1, le=100, description="Average CPU utilization (percent) to aim for."
    )


class CanaryStep(KubeModel):
    """Send ``weight`` percent of traffic to the new version, then wait ``pause``."""

    weight: int = Field(description="Percent of requests to the canary, 1 to 100.")
    pause: Duration = Field("1m", description="How long to hold this step.")


#: Builtin analysis metrics (docs/rollouts.md); each reads the canary pods' own series.
BUILTIN_METRICS = (
    "errorRate",
    "latencyP99Ratio",
    "predictionShift",
    "driftScore",
    "shadowAgreement",
    "onlineMetric",
)


class AnalysisMetric(KubeModel):
    """One check: a builtin or a PromQL query, and the bounds its value must stay within."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.builtin) != has(self.query)",
            message="exactly one of builtin or query must be set",
            check=lambda m: (m.builtin is None) != (m.query is None),
            field_path=".builtin",
        ),
        Rule(
            cel="has(self.min) || has(self.max)",
            message="at least one of min or max must be set",
            check=lambda m: m.min is not None or m.max is not None,
            field_path=".max",
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="min must not be greater than max",
            check=lambda m: m.min is None or m.max is None or m.min <= m.max,
            field_path=".min",
        ),
    )

    name: DNSLabel = Field(description="Name of the check, shown in conditions and Events.")
    builtin: (
        Literal[
            "errorRate",
            "latencyP99Ratio",
            "predictionShift",
            "driftScore",
            "shadowAgreement",
            "onlineMetric",
        ]
        | None
    ) = Field(None, description="A builtin measure of the canary: " + ", ".join(BUILTIN_METRICS))
    query: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="PromQL returning one number; {{ namespace }}, {{ deployment }}, "
        "{{ canaryVersion }} and {{ stableVersion }} are substituted.",
    )
    min: float | None = Field(None, description="The value must be at least this.")
    max: float | None = Field(None, description="The value must be at most this.")
    window: Duration = Field("1m", description="The range each check looks back over.")


class Analysis(KubeModel):
    """Metric checks that gate each canary step and roll the canary back when they fail."""

    interval: Duration = Field("30s", description="How often the checks run.")
    failure_limit: int = Field(
        3, ge=1, le=100, description="Failed checks that roll the canary back."
    )
    on_no_data: Literal["Pause", "Fail"] = Field(
        "Pause",
        description="A check without data: Pause holds the weight, Fail counts as a failure.",
    )
    min_requests: int = Field(
        20,
        ge=0,
        description="Fewer canary requests than this in a check's window count as no data.",
    )
    metrics: list[AnalysisMetric] = Field(
        min_length=1,
        max_length=16,
        description="The checks; every one must pass for a step to advance.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class GatewayParentRef(KubeModel):
    """A Gateway the HTTPRoute attaches to (Gateway API ``parentRefs``)."""

    name: DNSSubdomain = Field(description="The Gateway's name.")
    namespace: DNSLabel | None = Field(
        None, description="Its namespace (default: the deployment's)."
    )
    section_name: DNSLabel | None = Field(None, description="One listener of it.")


class GatewayRouter(KubeModel):
    """Where the HTTPRoute of ``router: gateway`` attaches, and for which hosts."""

    parent_refs: list[GatewayParentRef] = Field(
        min_length=1, max_length=8, description="The Gateways (or listeners) to attach to."
    )
    hostnames: list[DNSSubdomain] | None = Field(
        None, max_length=16, description="Host names the route answers (default: any)."
    )


def _gateway_when_routed_by_it(canary: Canary) -> bool:
    return (canary.router == "gateway") == (canary.gateway is not None)


class StickyBy(KubeModel):
    """What keeps one caller on one version during a rollout."""

    header: str = Field(
        pattern=STICKY_HEADER_PATTERN,
        description="A request header (e.g. x-user-id): a hash of its value places the caller "
        "on the stable or the canary side, the same on every pod, and a caller moves to the "
        "canary at most once as the weight rises; requests without it are split by "
        "round-robin.",
    )


class Canary(KubeModel):
    """Progressive rollout of a new version."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.steps.all(s, s.weight >= 1 && s.weight <= 100)",
            message="canary.steps[].weight must be between 1 and 100",
            check=lambda c: all(1 <= s.weight <= 100 for s in c.steps),
            field_path=".steps",
        ),
        Rule(
            cel="self.steps.map(s, s.weight).isSorted()",
            message="canary.steps[].weight must not decrease from one step to the next",
            check=lambda c: [s.weight for s in c.steps] == sorted(s.weight for s in c.steps),
            field_path=".steps",
        ),
        Rule(
            cel="(has(self.router) && self.router == 'gateway') == has(self.gateway)",
            message="canary.gateway must be set exactly when canary.router is gateway",
            check=_gateway_when_routed_by_it,
            field_path=".gateway",
        ),
    )

    steps: list[CanaryStep] = Field(
        min_length=1, max_length=20, description="Traffic steps, in order."
    )
    progress_deadline: Duration = Field(
        "10m",
        description="How long the canary pods may stay not ready (at the start, or after "
        "losing readiness mid-step); past it the canary is rolled back.",
    )
    analysis: Analysis | None = Field(
        None,
        description="Checks read from Prometheus before each step advances; failures roll the "
        "canary back (default: steps advance on their pauses alone).",
    )
    router: Literal["pod", "gateway"] = Field(
        "pod",
        description="pod: the stable pods forward the canary's share (needs nothing "
        "installed); gateway: a Gateway API HTTPRoute <name> with weighted backendRefs splits "
        "it (the Gateway API CRDs and a Gateway must exist).",
    )
    gateway: GatewayRouter | None = Field(
        None, description="The HTTPRoute's Gateways and hosts (router gateway only)."
    )
    sticky_by: StickyBy | None = Field(
        None,
        description="Keep one caller on one version (default: every request is split by "
        "weighted round-robin, exact to the percent).",
    )


class DriftMonitoring(KubeModel):
    """Live feature distributions compared with the training reference."""

    method: Literal["psi"] = Field("psi", description="Population stability index.")
    threshold: float = Field(0.2, gt=0, description="Drift score above which to alert.")
    window: int = Field(1000, ge=10, description="Rows in the sliding window.")
    features: list[str] | None = Field(None, description="Features to watch; default all.")


def _accuracy_floor_is_a_share(feedback: FeedbackMonitoring) -> bool:
    return feedback.metric != "accuracy" or feedback.floor <= 1


class FeedbackMonitoring(KubeModel):
    """The online metric from feedback labels, checked across replicas by one alert rule."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.metric != 'accuracy' || self.floor <= 1.0",
            message="monitoring.feedback.floor: an accuracy floor lies between 0 and 1",
            check=_accuracy_floor_is_a_share,
            field_path=".floor",
        ),
    )

    metric: Literal["accuracy", "rmse"] = Field(
        "accuracy",
        description="accuracy (classification): alert below floor; rmse (regression): alert "
        "above floor. It must be the served model's task's metric.",
    )
    floor: float = Field(
        ge=0,
        description="The accuracy the model must keep, or the RMSE it must stay under, over "
        "the feedback of all its serving pods together.",
    )
    window: int = Field(
        1000,
        ge=10,
        le=10_000_000,
        description="Feedback rows in each serving pod's rolling window.",
    )


class Monitoring(KubeModel):
    """What the serving pods measure."""

    drift: DriftMonitoring | None = Field(None, description="Data drift.")
    feedback: FeedbackMonitoring | None = Field(
        None,
        description="Online metric from feedback labels: KubeloopOnlineMetricBelowFloor fires "
        "past its floor (and a retrain follows, like for drift).",
    )


class Retrain(KubeModel):
    """Turn drift alerts (and an optional schedule) into new TrainingJobs."""

    enabled: bool = Field(True, description="Whether alerts create TrainingJobs.")
    template: TrainingJobSpec = Field(description="Spec of each TrainingJob created.")
    cooldown: Duration = Field("1h", description="Least time between two retrains.")
    max_concurrent: int = Field(1, ge=1, le=10, description="Most unfinished TrainingJobs.")
    schedule: str | None = Field(None, description="Cron schedule for periodic retraining.")


class ServingTLS(KubeModel):
    """HTTPS for the serving pods, with a certificate from a Secret."""

    secret_name: DNSSubdomain = Field(
        description="A kubernetes.io/tls Secret in the same namespace (tls.crt, tls.key and "
        "optionally ca.crt, as cert-manager writes it). Its certificate must be valid for the "
        "deployment's Services: <name>.<namespace>.svc and <name>-canary.<namespace>.svc."
    )


class ServingGRPC(KubeModel):
    """The Open Inference Protocol v2 over gRPC, beside REST, on its own port."""

    port: int = Field(
        8081,
        ge=1,
        le=65535,
        description="Container and Service port of the gRPC service (named grpc); it must "
        "differ from the REST port (the operator's serving port, 8080 by default).",
    )


_SET_OPERATORS = ("In", "NotIn")
#: Kubernetes label syntax: a name of at most 63 characters, a key optionally prefixed by a
#: DNS subdomain and "/", a value a name or empty.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def _values_match_operator(r: LabelSelectorRequirement) -> bool:
    return bool(r.values) == (r.operator in _SET_OPERATORS)


class LabelSelectorRequirement(KubeModel):
    """One ``matchExpressions`` entry of a label selector."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.operator == 'In' || self.operator == 'NotIn') == "
            "(has(self.values) && size(self.values) > 0)",
            message="values must be non-empty exactly when operator is In or NotIn",
            check=_values_match_operator,
            field_path=".values",
        ),
    )

    key: LabelKey = Field(description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] | None = Field(
        None, max_length=64, description="Label values (In and NotIn only)."
    )


class LabelSelector(KubeModel):
    """A Kubernetes label selector; an empty one selects everything."""

    match_labels: dict[str, LabelValue] | None = Field(
        None,
        description="Labels that must all match.",
        json_schema_extra={"maxProperties": 64},
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, max_length=16, description="Requirements that must all hold."
    )

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        # the schema checks the values; a bad key is the operator's InvalidSpec
        for key in labels or {}:
            if len(key) > 317 or not re.match(LABEL_KEY, key):
                raise ValueError(f"matchLabels key {key[:80]!r} is not a label key")
        return labels


class NetworkPolicyPeer(KubeModel):
    """Pods allowed to connect, as in a NetworkPolicy's ``from`` (no ipBlock)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.podSelector) || has(self.namespaceSelector)",
            message="networkPolicy.ingressFrom[] needs a podSelector or a namespaceSelector",
            check=lambda p: p.pod_selector is not None or p.namespace_selector is not None,
        ),
    )

    pod_selector: LabelSelector | None = Field(
        None,
        description="Pods (in this namespace, or in those namespaceSelector picks) allowed in.",
    )
    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces whose pods (all, or those podSelector picks) are allowed in."
    )


class ServingNetworkPolicy(KubeModel):
    """Who may reach the serving pods: a NetworkPolicy the operator writes."""

    ingress_from: list[NetworkPolicyPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Peers allowed to connect to the serving port, besides the deployment's own "
        "pods (stable pods forward to the canary); empty: only those. Add your clients, ingress "
        "controller and Prometheus.",
    )


class PredictionLogPVC(KubeModel):
    """A PersistentVolumeClaim the serving pods write their prediction logs to."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.path) || !self.path.contains('..')",
            message="predictionLog.pvc.path must not contain '..'",
            check=lambda p: ".." not in p.path,
            field_path=".path",
        ),
    )

    claim_name: DNSSubdomain = Field(
        description="The claim, in the deployment's namespace; it must allow every serving pod "
        "to mount it (ReadWriteMany, or ReadWriteOnce with all pods on one node)."
    )
    path: str = Field(
        "",
        max_length=253,
        pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        description="Folder inside the claim (relative, created if missing; default its root). "
        "Each pod writes <path>/<pod name>.jsonl, so pods never share a file.",
    )


def _sink_has_its_target(p: PredictionLog) -> bool:
    return (p.sink == "pvc") == (p.pvc is not None)


def _object_store_has_its_uri(p: PredictionLog) -> bool:
    return (p.sink == "objectStore") == (p.uri is not None)


class PredictionLog(KubeModel):
    """One JSON line per predicted row, written by each serving pod off the request path."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(has(self.sink) && self.sink == 'pvc') == has(self.pvc)",
            message="predictionLog.pvc must be set exactly when predictionLog.sink is pvc",
            check=_sink_has_its_target,
            field_path=".pvc",
        ),
        Rule(
            cel="(has(self.sink) && self.sink == 'objectStore') == has(self.uri)",
            message="predictionLog.uri must be set exactly when predictionLog.sink is objectStore",
            check=_object_store_has_its_uri,
            field_path=".uri",
        ),
    )

    sink: Literal["stdout", "pvc", "objectStore"] = Field(
        "stdout",
        description="stdout: the container's standard output (collected with the pod's logs); "
        "pvc: one file per pod on the claim in pvc, rotated by size; objectStore: each pod's "
        "rotated files put under uri (<uri>/<pod>/<time ns>.jsonl), with the artifact "
        "store's credentials.",
    )
    pvc: PredictionLogPVC | None = Field(None, description="The claim (sink pvc only).")
    uri: str | None = Field(
        None,
        pattern=r"^(s3|gs|gcs|az|abfs|file)://.+",
        max_length=1024,
        description="Object-store prefix, e.g. s3://bucket/prediction-logs (sink objectStore).",
    )
    sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of predictions logged (0 to 1; default all)."
    )
    include_inputs: bool = Field(
        False, description="Whether logged lines also carry the request's inputs."
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024**4,
        description="A pod's file is rotated past this size (<file>.1, .2 … on a claim; "
        "shipped to the object store).",
    )
    keep_files: int = Field(
        3, ge=1, le=100, description="Rotated files kept per pod besides the current one."
    )


class Shadow(KubeModel):
    """A version that gets a mirror of live traffic; its answers are compared, never returned."""

    version: int = Field(
        ge=1, description="The ModelVersion (of spec.modelName) served by <name>-shadow."
    )
    percent: float = Field(
        100,
        gt=0,
        le=100,
        description="Share of the requests the stable pods answer that is mirrored to it.",
    )


class Retention(KubeModel):
    """How many of the model's versions the registry keeps."""

    keep_versions: int = Field(
        ge=1,
        le=1000,
        description="Keep the newest N ModelVersions of spec.modelName; older ones are "
        "deleted, then their artifact folders (by a Job). Never a version this or another "
        "deployment serves (stable, canary, shadow) or pins.",
    )


class ModelDeploymentSpec(KubeModel):
    """Serve a model and keep it fresh."""

    model_name: DNSLabel = Field(description="The model to serve.")
    version: VersionPolicy = Field(default_factory=VersionPolicy, description="Which version.")
    replicas: int = Field(1, ge=0, description="Stable pods (ignored with autoscaling).")
    resources: ResourceRequirements | None = Field(None, description="Per serving pod.")
    autoscaling: Autoscaling | None = Field(None, description="Optional HPA.")
    canary: Canary | None = Field(None, description="Roll new versions out in steps.")
    monitoring: Monitoring | None = Field(None, description="Drift and online metrics.")
    retrain: Retrain | None = Field(None, description="Retraining policy.")
    image: str | None = Field(None, description="Serving image; default: the operator's.")
    tls: ServingTLS | None = Field(
        None, description="Serve HTTPS with a certificate from a Secret (default: plain HTTP)."
    )
    network_policy: ServingNetworkPolicy | None = Field(
        None,
        description="Restrict ingress to the serving pods with a NetworkPolicy (default: none).",
    )
    grpc: ServingGRPC | None = Field(
        None,
        description="Also serve the Open Inference Protocol v2 over gRPC (GRPCInferenceService) "
        "on a port named grpc of the pods and Services (default: REST only). A canary's share "
        "of gRPC requests is forwarded to the canary's REST port; TLS, when set, covers it too.",
    )
    prediction_log: PredictionLog | None = Field(
        None,
        description="Log every prediction (or a sample) from stable and canary pods "
        "(default: no log).",
    )
    shadow: Shadow | None = Field(
        None,
        description="Serve another version in <name>-shadow and mirror a share of stable "
        "traffic to it; agreement is exported per version (kubeloop_shadow_compared_total).",
    )
    retention: Retention | None = Field(
        None, description="Delete old ModelVersions and their artifacts (default: keep all)."
    )


class RetrainRecord(KubeModel):
    """The last retrain this deployment triggered."""

    model_config = ConfigDict(extra="ignore")

    time: datetime = Field(description="When the TrainingJob was created.")
    training_job: str = Field(description="Its name.")
    trigger: str = Field(description="alert or schedule.")
    fingerprint: str | None = Field(None, description="Alertmanager fingerprint.")


class CheckResult(KubeModel):
    """One metric's reading at the last check."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="The metric's name.")
    value: float | None = Field(None, description="What it read; absent when there was no data.")
    result: CheckOutcome = Field(description="Pass, Fail or NoData.")
    message: str = Field("", description="Why, in words.")


class AnalysisStatus(KubeModel):
    """Where the analysis of the current canary stands (all of its state: a restarted
    operator carries on from here)."""

    model_config = ConfigDict(extra="ignore")

    failed_checks: int = Field(0, ge=0, description="Failed checks of this canary so far.")
    last_check_time: datetime | None = Field(None, description="When the last check ran.")
    last_check_step: int | None = Field(
        None, description="The step whose weight the pods had at the last check."
    )
    last_check_weight: int | None = Field(None, description="The canary weight at the last check.")
    last_result: CheckOutcome | None = Field(None, description="Outcome of the last check.")
    results: list[CheckResult] = Field(
        default_factory=list, max_length=16, description="The last check's readings."
    )


class RollbackRecord(KubeModel):
    """A canary rolled back automatically (its version is marked Rejected)."""

    model_config = ConfigDict(extra="ignore")

    version: int = Field(description="The version rolled back.")
    reason: str = Field(description="AnalysisFailed or ProgressDeadlineExceeded.")
    message: str = Field(description="What failed: the check, its value and the bound.")
    failed_checks: int | None = Field(None, description="Failed checks counted at the rollback.")
    generation: int | None = Field(None, description="The spec generation it happened under.")


class CanaryStatus(KubeModel):
    """The canary's analysis state."""

    model_config = ConfigDict(extra="ignore")

    analysis: AnalysisStatus | None = Field(None, description="The analysis of this canary.")


class ModelDeploymentStatus(StatusBase):
    """What is being served."""

    phase: Literal["Pending", "Progressing", "Serving", "Degraded"] | None = Field(
        None, description="Pending, Progressing (canary), Serving or Degraded."
    )
    stable_version: int | None = Field(None, description="Version the stable pods serve.")
    canary_version: int | None = Field(None, description="Version under canary, if any.")
    shadow_version: int | None = Field(
        None, description="Version the shadow pods serve, when spec.shadow names a Ready one."
    )
    canary_weight: int | None = Field(None, ge=0, le=100, description="Canary traffic share.")
    http_route: str | None = Field(
        None, description="The HTTPRoute splitting traffic (canary.router gateway)."
    )
    canary_step: int | None = Field(None, ge=0, description="Index of the current step.")
    step_started_time: datetime | None = Field(None, description="When the current step began.")
    aborted_version: int | None = Field(
        None, description="A version whose canary was aborted; not retried until a newer one."
    )
    canary: CanaryStatus | None = Field(None, description="The canary analysis' state.")
    canary_started_time: datetime | None = Field(
        None,
        description="When the current canary began.",
    )
    canary_not_ready_since: datetime | None = Field(
        None,
        description="Since when the canary's pods are not ready (null while they are); "
        "progressDeadline runs from it.",
    )
    rolled_back: RollbackRecord | None = Field(
        None,
        description="The last automatic rollback; the deployment is Degraded while it stands "
        "(until a later version is promoted or the spec changes).",
    )
    url: str | None = Field(None, description="In-cluster URL of the inference endpoint.")
    feedback_token_secret: str | None = Field(
        None,
        description="Secret (key 'token') holding the bearer token that the serving pods "
        "require for feedback and model control.",
    )
    served_model_versions: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="ModelVersions served now (stable, canary), each labelled "
        "served-by.kubeloop.io/<deployment> so that they cannot be deleted.",
    )
    last_retrain: RetrainRecord | None = Field(None, description="The last retrain.")
    retrain_keys: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Retrain triggers already acted on, newest first (alert:<fingerprint>@"
        "<startsAt>, schedule:<tick>); one seen again never creates a second TrainingJob.",
    )


# ------------------------------------------------------------------- BatchPrediction

#: A cron schedule as a CronJob takes it: five fields, or a macro such as @daily.
CRON = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|([0-9A-Za-z*?/,-]+[ \t]+){4}[0-9A-Za-z*?/,-]+)$"
)
#: Output file suffixes that say the format when ``output.format`` is not given.
OUTPUT_SUFFIX = r"(?i)[.](csv|parquet|pq)$"
#: Where a Job can write: a path in the pod (a mounted volume) or an object store.
WRITABLE_URI = r"^(/|(file|s3|gs|gcs|az|abfs|abfss)://)"


def _one_model(r: ModelRef) -> bool:
    return (r.name is None) != (r.model_name is None)


class ModelRef(KubeModel):
    """The model to score with: one ModelVersion by name, or a model and a version policy
    (as a ModelDeployment chooses: Pinned, or the newest Ready, non-Rejected version)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.name) != has(self.modelName)",
            message="exactly one of modelRef.name or modelRef.modelName must be set",
            check=_one_model,
            field_path=".name",
        ),
        Rule(
            cel="!has(self.version) || has(self.modelName)",
            message="modelRef.version goes with modelRef.modelName",
            check=lambda r: r.version is None or r.model_name is not None,
            field_path=".version",
        ),
    )

    name: DNSSubdomain | None = Field(
        None, description="A ModelVersion in the same namespace (e.g. cancer-v3)."
    )
    model_name: DNSLabel | None = Field(
        None, description="A model (ModelVersion.spec.modelName); its version by `version`."
    )
    version: VersionPolicy | None = Field(
        None, description="Which version of modelName (default: the newest Ready one)."
    )


def _format_known(o: PredictionOutput) -> bool:
    return o.format is not None or re.search(OUTPUT_SUFFIX, o.uri) is not None


class PredictionOutput(KubeModel):
    """Where the scored table goes: the input rows with the prediction columns appended."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"has(self.format) || self.uri.matches('{OUTPUT_SUFFIX}')",
            message="output.format must be set when output.uri does not end in .csv, .parquet "
            "or .pq",
            check=_format_known,
            field_path=".format",
        ),
        Rule(
            cel=f"self.uri.matches('{WRITABLE_URI}')",
            message="output.uri must be an absolute path or a file://, s3://, gs://, gcs://, "
            "az://, abfs:// or abfss:// URI",
            check=lambda o: re.match(WRITABLE_URI, o.uri) is not None,
            field_path=".uri",
        ),
    )

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="File URI (file://, s3://, gs://, az://), written whole or not at all; "
        "each run replaces it.",
    )
    format: Literal["csv", "parquet"] | None = Field(
        None, description="csv or parquet; default: from the uri's suffix."
    )


class BatchPredictionSpec(KubeModel):
    """Score one Dataset version with one model version, once or on a schedule."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"!has(self.schedule) || self.schedule.matches('{CRON}')",
            message="schedule must be a cron expression of five fields (e.g. '0 3 * * *') or "
            "a macro (@hourly, @daily, @weekly, @monthly, @yearly)",
            check=lambda s: s.schedule is None or re.match(CRON, s.schedule) is not None,
            field_path=".schedule",
        ),
    )

    model_ref: ModelRef = Field(description="The model version to score with.")
    dataset_ref: DatasetRef = Field(
        description="The data to score; default version: the Dataset's current one (for a "
        "schedule, the current one at each run)."
    )
    output: PredictionOutput = Field(description="Where the predictions are written.")
    schedule: str | None = Field(
        None,
        max_length=256,
        description="Cron schedule (a CronJob); without it, one Job runs once.",
    )
    suspend: bool = Field(
        False,
        description="Start no run (a schedule's CronJob is suspended; a run already started "
        "finishes).",
    )
    resources: ResourceRequirements | None = Field(
        None, description="Resources of the predict container."
    )
    backoff_limit: int = Field(1, ge=0, le=10, description="Retries of each run's Job.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Give up on a run that takes longer than this."
    )
    image: str | None = Field(None, description="Trainer image; default: the operator's.")


class BatchPredictionStatus(StatusBase):
    """What the last run scored, with what, and what it wrote."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Scheduled", "Suspended"] | None = (
        Field(
            None,
            description="Pending, Running, Succeeded, Failed (a one-off run), Scheduled (a "
            "schedule's CronJob is in place) or Suspended.",
        )
    )
    model_version: str | None = Field(None, description="The ModelVersion scored with.")
    version: int | None = Field(None, ge=1, description="Its version number.")
    dataset_version: str | None = Field(None, description="The data version scored.")
    job_name: str | None = Field(None, description="The Job of the latest run.")
    cron_job_name: str | None = Field(None, description="The CronJob of a schedule.")
    observed_job: str | None = Field(
        None, description="The latest finished Job whose result is recorded here."
    )
    rows: int | None = Field(None, ge=0, description="Rows scored by that run.")
    duration_seconds: float | None = Field(None, ge=0, description="How long it scored.")
    output_uri: str | None = Field(None, description="What it wrote.")
    output_sha256: str | None = Field(None, description="sha256 of the written file, hex.")
    start_time: datetime | None = Field(None, description="When the latest run began.")
    completion_time: datetime | None = Field(None, description="When it finished.")
    last_schedule_time: datetime | None = Field(
        None, description="When the CronJob last started a run."
    )
    reason: str | None = Field(None, description="Why the latest run failed.")


# ------------------------------------------------------------------------- Resources

SpecT = TypeVar("SpecT", bound=KubeModel)
StatusT = TypeVar("StatusT", bound=StatusBase)


class PrinterColumn(BaseModel):
    """One ``additionalPrinterColumns`` entry."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


class KindInfo(BaseModel):
    """How a kind is named and shown by kubectl."""

    kind: str
    plural: str
    short_names: list[str]
    printer_columns: list[PrinterColumn]


READY = PrinterColumn(
    name="Ready",
    json_path='.status.conditions[?(@.type=="Ready")].status',
    description="Ready condition",
)
AGE = PrinterColumn(name="Age", json_path=".metadata.creationTimestamp", type="date")


class Resource(BaseModel, Generic[SpecT, StatusT]):
    """A whole object: apiVersion, kind, metadata, spec and status."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    info: ClassVar[KindInfo]

    api_version: Literal["kubeloop.io/v1alpha1"] = Field("kubeloop.io/v1alpha1", alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None

    @classmethod
    def spec_type(cls) -> type[KubeModel]:
        """The concrete spec model of this kind."""
        annotation = cls.model_fields["spec"].annotation
        assert isinstance(annotation, type)
        assert issubclass(annotation, KubeModel)
        return annotation

    @classmethod
    def status_type(cls) -> type[StatusBase]:
        """The concrete status model of this kind."""
        annotation = cls.model_fields["status"].annotation
        found = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(found) == 1
        assert issubclass(found[0], StatusBase)
        return found[0]  # type: ignore[no-any-return]


class Dataset(Resource[DatasetSpec, DatasetStatus]):
    """A versioned tabular data set."""

    info = KindInfo(
        kind="Dataset",
        plural="datasets",
        short_names=["dset"],
        printer_columns=[
            READY,
            PrinterColumn(name="Version", json_path=".status.version"),
            PrinterColumn(name="Rows", json_path=".status.rows", type="integer"),
            PrinterColumn(name="Format", json_path=".spec.format", priority=1),
            AGE,
        ],
    )
    kind: Literal["Dataset"] = "Dataset"


class TrainingJob(Resource[TrainingJobSpec, TrainingJobStatus]):
    """One training run that may produce a ModelVersion."""

    info = KindInfo(
        kind="TrainingJob",
        plural="trainingjobs",
        short_names=["tj"],
        printer_columns=[
            READY,
            PrinterColumn(name="Phase", json_path=".status.phase"),
            PrinterColumn(name="Model", json_path=".spec.modelName"),
            PrinterColumn(name="Version", json_path=".status.version", type="integer"),
            PrinterColumn(name="Estimator", json_path=".spec.estimator.className", priority=1),
            AGE,
        ],
    )
    kind: Literal["TrainingJob"] = "TrainingJob"


class ModelVersion(Resource[ModelVersionSpec, ModelVersionStatus]):
    """An immutable trained model."""

    info = KindInfo(
        kind="ModelVersion",
        plural="modelversions",
        short_names=["mv"],
        printer_columns=[
            READY,
            PrinterColumn(name="Model", json_path=".spec.modelName"),
            PrinterColumn(name="Version", json_path=".spec.version", type="integer"),
            PrinterColumn(name="Task", json_path=".spec.task"),
            PrinterColumn(name="Dataset", json_path=".spec.lineage.datasetVersion", priority=1),
            AGE,
        ],
    )
    kind: Literal["ModelVersion"] = "ModelVersion"


class ModelDeployment(Resource[ModelDeploymentSpec, ModelDeploymentStatus]):
    """A served model with canary rollout and retraining."""

    info = KindInfo(
        kind="ModelDeployment",
        plural="modeldeployments",
        short_names=["md"],
        printer_columns=[
            READY,
            PrinterColumn(name="Model", json_path=".spec.modelName"),
            PrinterColumn(name="Stable", json_path=".status.stableVersion", type="integer"),
            PrinterColumn(name="Canary", json_path=".status.canaryVersion", type="integer"),
            PrinterColumn(name="Weight", json_path=".status.canaryWeight", type="integer"),
            PrinterColumn(name="Phase", json_path=".status.phase", priority=1),
            PrinterColumn(name="URL", json_path=".status.url", priority=1),
            AGE,
        ],
    )
    kind: Literal["ModelDeployment"] = "ModelDeployment"


class BatchPrediction(Resource[BatchPredictionSpec, BatchPredictionStatus]):
    """Predictions for a Dataset version, once or on a schedule."""

    info = KindInfo(
        kind="BatchPrediction",
        plural="batchpredictions",
        short_names=["bp"],
        printer_columns=[
            READY,
            PrinterColumn(name="Phase", json_path=".status.phase"),
            PrinterColumn(name="Model", json_path=".status.modelVersion"),
            PrinterColumn(name="Rows", json_path=".status.rows", type="integer"),
            PrinterColumn(name="Schedule", json_path=".spec.schedule"),
            PrinterColumn(name="LastSchedule", json_path=".status.lastScheduleTime", type="date"),
            PrinterColumn(name="Dataset", json_path=".status.datasetVersion", priority=1),
            PrinterColumn(name="Output", json_path=".status.outputUri", priority=1),
            AGE,
        ],
    )
    kind: Literal["BatchPrediction"] = "BatchPrediction"


KINDS: tuple[type[Resource[Any, Any]], ...] = (
    Dataset,
    TrainingJob,
    ModelVersion,
    ModelDeployment,
    BatchPrediction,
)
