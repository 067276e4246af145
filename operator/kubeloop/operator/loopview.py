"""One model's loop at a glance: the pure half of ``kubeloop status``.

:func:`build` turns the objects the API server returned (and, when Prometheus
answered, the live drift) into a :class:`ModelLoop`; :func:`render` turns that into
Rich tables. Neither talks to anything, so both are tested on plain dicts; the
command (:mod:`kubeloop.operator.status_cli`) does the reading and the printing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kubeloop.api.v1alpha1 import Dataset, ModelDeployment, ModelVersion, TrainingJob
from kubeloop.operator.builders import DEPLOYMENT_LABEL, SERVED_BY_PREFIX


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True)


class DatasetRow(_Row):
    name: str
    version: str | None
    rows: int | None
    snapshots: int
    ready: str


class TrainingRow(_Row):
    name: str
    phase: str | None
    dataset_version: str | None
    metrics: dict[str, float]
    verdict: str
    trigger: str
    created: datetime | None


class VersionRow(_Row):
    name: str
    version: int
    ready: str
    rejected: str | None
    metrics: dict[str, float]
    training_job: str | None
    dataset_version: str | None
    image: str | None
    served_by: dict[str, str]


class DeploymentRow(_Row):
    name: str
    phase: str | None
    stable: int | None
    canary: int | None
    weight: int | None
    analysis: str
    rolled_back: str | None
    last_retrain: str | None


class FeatureDrift(_Row):
    deployment: str
    feature: str
    score: float
    threshold: float | None


class ModelLoop(_Row):
    """Everything ``kubeloop status`` shows of one model."""

    model: str
    namespace: str
    datasets: list[DatasetRow]
    trainings: list[TrainingRow]
    versions: list[VersionRow]
    deployments: list[DeploymentRow]
    drift: list[FeatureDrift]
    drift_note: str | None = None


@dataclass
class Objects:
    """The four kinds as the API server listed them (plain dicts)."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    trainingjobs: list[dict[str, Any]] = field(default_factory=list)
    modelversions: list[dict[str, Any]] = field(default_factory=list)
    modeldeployments: list[dict[str, Any]] = field(default_factory=list)


def models_in(objects: Objects) -> list[str]:
    """Every model named by a TrainingJob, ModelVersion or ModelDeployment, sorted."""
    kinds = (objects.trainingjobs, objects.modelversions, objects.modeldeployments)
    return sorted({o["spec"]["modelName"] for kind in kinds for o in kind if _model_of(o)})


def _model_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("spec") or {}).get("modelName")


def short(digest: str | None) -> str | None:
    """``sha256:0123456789ab`` (``sha256-v2:0123456789ab``) from a full content digest."""
    if not digest:
        return None
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}:{hex_digest[:12]}" if hex_digest else digest[:19]


def ready_of(status: Any) -> str:
    """The Ready condition as ``True``/``False (Reason)``; ``-`` before the first reconcile."""
    for condition in getattr(status, "conditions", None) or []:
        if condition.type == "Ready":
            return (
                "True" if condition.status == "True" else f"{condition.status} ({condition.reason})"
            )
    return "-"


def condition_message(status: Any, type_: str) -> str | None:
    """The message of condition ``type_`` when it is True."""
    for condition in getattr(status, "conditions", None) or []:
        if condition.type == type_ and condition.status == "True":
            return str(condition.message or condition.reason)
    return None


def build(
    model: str,
    namespace: str,
    objects: Objects,
    drift: list[FeatureDrift] | None = None,
    drift_note: str | None = None,
    limit: int = 10,
) -> ModelLoop:
    """The loop of ``model``: its TrainingJobs (newest first, at most ``limit``), the Datasets
    they train on, its versions (newest first), its deployments and their live drift."""
    jobs = [TrainingJob.model_validate(o) for o in objects.trainingjobs if _model_of(o) == model]
    jobs.sort(key=lambda tj: _created(tj.metadata) or datetime.min, reverse=True)
    used = {tj.spec.dataset_ref.name for tj in jobs}
    versions = [ModelVersion.model_validate(o) for o in objects.modelversions]
    mine = sorted(
        (v for v in versions if v.spec.model_name == model), key=lambda v: -v.spec.version
    )
    return ModelLoop(
        model=model,
        namespace=namespace,
        datasets=[_dataset_row(Dataset.model_validate(o)) for o in _named(objects.datasets, used)],
        trainings=[_training_row(tj) for tj in jobs[:limit]],
        versions=[_version_row(v) for v in mine[:limit]],
        deployments=[
            _deployment_row(ModelDeployment.model_validate(o))
            for o in objects.modeldeployments
            if _model_of(o) == model
        ],
        drift=sorted(drift or [], key=lambda d: (-d.score, d.deployment, d.feature)),
        drift_note=drift_note,
    )


def _named(objs: Iterable[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    return sorted(
        (o for o in objs if o["metadata"]["name"] in names), key=lambda o: o["metadata"]["name"]
    )


def _created(meta: Any) -> datetime | None:
    value = (meta.model_extra or {}).get("creationTimestamp")
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return (
        datetime.fromisoformat(str(value).replace("Z", "+00:00")).replace(tzinfo=None)
        if value
        else None
    )


def _dataset_row(ds: Dataset) -> DatasetRow:
    status = ds.status
    return DatasetRow(
        name=ds.metadata.name,
        version=short(status.version) if status else None,
        rows=status.rows if status else None,
        snapshots=len(status.history) if status else 0,
        ready=ready_of(status),
    )


def _training_row(tj: TrainingJob) -> TrainingRow:
    status = tj.status
    comparison = status.comparison if status else None
    if comparison is not None:
        verdict = comparison.message or comparison.reason
    else:
        verdict = (status.reason if status else None) or ""
    trigger = tj.metadata.labels.get(DEPLOYMENT_LABEL)
    return TrainingRow(
        name=tj.metadata.name,
        phase=status.phase if status else None,
        dataset_version=short(status.dataset_version if status else None),
        metrics=(status.metrics or {}) if status else {},
        verdict=verdict,
        trigger=f"retrain of {trigger}" if trigger else "by hand",
        created=_created(tj.metadata),
    )


def _version_row(mv: ModelVersion) -> VersionRow:
    lineage = mv.spec.lineage
    return VersionRow(
        name=mv.metadata.name,
        version=mv.spec.version,
        ready=ready_of(mv.status),
        rejected=condition_message(mv.status, "Rejected"),
        metrics=mv.spec.metrics or {},
        training_job=lineage.training_job if lineage else None,
        dataset_version=short(lineage.dataset_version) if lineage else None,
        image=lineage.image if lineage else None,
        served_by={
            k.removeprefix(SERVED_BY_PREFIX): v
            for k, v in mv.metadata.labels.items()
            if k.startswith(SERVED_BY_PREFIX)
        },
    )


def _deployment_row(md: ModelDeployment) -> DeploymentRow:
    status = md.status
    analysis = status.canary.analysis if status and status.canary else None
    checks = ""
    if analysis is not None and analysis.last_result is not None:
        failing = [r.message or r.name for r in analysis.results if r.result != "Pass"]
        checks = f"{analysis.last_result}, {analysis.failed_checks} failed"
        checks += f": {'; '.join(failing)}" if failing else ""
    retrain = status.last_retrain if status else None
    return DeploymentRow(
        name=md.metadata.name,
        phase=status.phase if status else None,
        stable=status.stable_version if status else None,
        canary=status.canary_version if status else None,
        weight=status.canary_weight if status else None,
        analysis=checks,
        rolled_back=(
            f"v{status.rolled_back.version}: {status.rolled_back.message}"
            if status and status.rolled_back
            else None
        ),
        last_retrain=(
            f"{retrain.training_job} ({retrain.trigger}, {retrain.time:%Y-%m-%d %H:%M})"
            if retrain
            else None
        ),
    )


# ------------------------------------------------------------------------- render


def _metrics(values: dict[str, float], keep: int = 3) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(values.items())[:keep])


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def render(loop: ModelLoop) -> RenderableType:
    """The loop as Rich tables, one per part, in the loop's order."""
    head = Text.assemble(
        ("model ", "dim"), (loop.model, "bold"), ("  namespace ", "dim"), loop.namespace
    )
    return Group(
        head,
        _datasets_table(loop),
        _trainings_table(loop),
        _versions_table(loop),
        _deployments_table(loop),
        _drift_table(loop),
    )


def _datasets_table(loop: ModelLoop) -> Table:
    table = _table("Datasets", "NAME", "VERSION", "ROWS", "SNAPSHOTS", "READY")
    for d in loop.datasets:
        table.add_row(d.name, _text(d.version), _text(d.rows), str(d.snapshots), d.ready)
    return table


def _trainings_table(loop: ModelLoop) -> Table:
    table = _table("Training jobs", "NAME", "PHASE", "DATA", "METRICS", "GATE", "TRIGGER")
    for t in loop.trainings:
        table.add_row(
            t.name,
            _text(t.phase),
            _text(t.dataset_version),
            _text(_metrics(t.metrics)),
            _text(t.verdict),
            t.trigger,
        )
    return table


def _versions_table(loop: ModelLoop) -> Table:
    table = _table(
        "Model versions", "VERSION", "READY", "SERVED BY", "METRICS", "LINEAGE", "REJECTED"
    )
    for v in loop.versions:
        served = ", ".join(f"{d} ({role})" for d, role in sorted(v.served_by.items()))
        lineage = " ".join(x for x in (v.training_job, v.dataset_version, v.image) if x)
        rejected = Text(v.rejected, style="red") if v.rejected else Text("-")
        table.add_row(
            f"{v.version} ({v.name})",
            v.ready,
            _text(served),
            _text(_metrics(v.metrics)),
            _text(lineage),
            rejected,
        )
    return table


def _deployments_table(loop: ModelLoop) -> Table:
    table = _table(
        "Deployments", "NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "ANALYSIS", "LAST RETRAIN"
    )
    for d in loop.deployments:
        analysis = d.analysis or (f"rolled back {d.rolled_back}" if d.rolled_back else "")
        table.add_row(
            d.name,
            _text(d.phase),
            _text(d.stable),
            _text(d.canary),
            "-" if d.weight is None else f"{d.weight}%",
            _text(analysis),
            _text(d.last_retrain),
        )
    return table


def _drift_table(loop: ModelLoop) -> RenderableType:
    if loop.drift_note:
        return Text(f"Drift: {loop.drift_note}", style="dim")
    table = _table("Drift (live, stable pods)", "DEPLOYMENT", "FEATURE", "PSI", "THRESHOLD")
    for d in loop.drift:
        over = d.threshold is not None and d.score > d.threshold
        score = Text(f"{d.score:.3f}", style="red bold" if over else "")
        table.add_row(d.deployment, d.feature, score, _text(d.threshold))
    return table
