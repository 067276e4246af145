"""Applying retention (decided in :mod:`kubeloop.operator.retention`)."""

from __future__ import annotations

from typing import Any

from kubeloop.api.base import API_VERSION
from kubeloop.api.v1alpha1 import DatasetSpec, ModelDeploymentSpec
from kubeloop.operator import retention
from kubeloop.operator.handlers.common import Context, Reconcile


def enforce(
    ctx: Context,
    rec: Reconcile,
    spec: ModelDeploymentSpec,
    versions: list[dict[str, Any]],
    served: dict[str, str],
) -> None:
    """Delete the versions past ``spec.retention.keepVersions``: the cleanup Job for their
    folders first (it holds the list), then the objects."""
    if spec.retention is None:
        return
    protected = set(served)
    if spec.version.pinned is not None:
        protected |= {
            mv["metadata"]["name"]
            for mv in versions
            if int(mv["spec"]["version"]) == spec.version.pinned
        }
    prefix = retention.models_prefix(ctx.settings, rec.namespace)
    keep = spec.retention.keep_versions
    pruning = retention.prune(versions, keep, protected, rec.name, prefix)
    if not pruning.versions or not spec_is_current(ctx, rec, "ModelDeployment"):
        return
    if pruning.folders:
        ctx.kube.create(retention.cleanup_job(rec.body, pruning.folders, ctx.settings))
    for name in pruning.versions:
        ctx.kube.delete(API_VERSION, "ModelVersion", rec.namespace, name)
    rec.info(
        "RetentionPruned",
        f"deleted ModelVersions {', '.join(pruning.versions)} (keepVersions {keep}); "
        f"{len(pruning.folders)} artifact folder(s) to the cleanup Job",
    )


def spec_is_current(ctx: Context, rec: Reconcile, kind: str) -> bool:
    """Whether the pass's spec is still the object's (one read, made only before deleting).

    A pass woken by a child's change runs on the parent's body as kopf's index holds it,
    which can be a moment behind a spec change on its way; the next pass corrects anything
    else, but not a deletion a raised ``keepVersions`` or ``keepSnapshots`` would have
    spared. An outdated spec deletes nothing: the change's own pass follows.
    """
    live = ctx.kube.get(API_VERSION, kind, rec.namespace, rec.name)
    return live is not None and int(live["metadata"].get("generation") or 0) == rec.generation


def trim_history(ctx: Context, rec: Reconcile, spec: DatasetSpec) -> None:
    """After a new snapshot: without retention, status keeps the newest ``history_limit``
    entries (the store keeps every snapshot); with it, the snapshots past
    ``keepSnapshots`` that no ModelVersion's lineage names leave the store (a cleanup
    Job) and the history."""
    history = list(rec.status.get("history") or [])
    if spec.retention is None:
        rec.status["history"] = history[: ctx.settings.history_limit]
        return
    keep = spec.retention.keep_snapshots
    if len(history) <= keep:
        return
    referenced = {
        str(lineage.get("datasetVersion"))
        for mv in ctx.kube.list(API_VERSION, "ModelVersion", rec.namespace)
        if (lineage := (mv.get("spec") or {}).get("lineage") or {}).get("dataset") == rec.name
    }
    prefix = retention.datasets_prefix(ctx.settings, rec.namespace, rec.name)
    kept, folders = retention.prune_snapshots(history, keep, referenced, prefix)
    if folders and not spec_is_current(ctx, rec, "Dataset"):
        return
    if folders:
        ctx.kube.create(retention.cleanup_job(rec.body, folders, ctx.settings, prefix))
        rec.info("RetentionPruned", f"{len(folders)} snapshot(s) to the cleanup Job")
    rec.status["history"] = kept
