"""Retention: ``ModelDeployment.spec.retention.keepVersions`` for the registry, and
``Dataset.spec.retention.keepSnapshots`` for snapshots.

The newest N ModelVersions of the deployment's model stay; older ones go, except a
version this deployment serves (stable, canary, shadow) or pins, or one another
deployment serves (its ``served-by.kubeloop.io/<name>`` label, the same label the
chart's admission policy protects). Their artifact folders are deleted by a Job in the
trainer image (``kubeloop gc-artifacts``): the operator never writes the store.

Order, so a crash loses nothing that is still referenced: the cleanup Job (which holds
the folder list) is created first, then the ModelVersion objects are deleted. The Job
deletes only folders under the namespace's ``models/`` prefix that no kept version
points into. A folder whose Job was lost is garbage, never a version without its model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubeloop.contracts.artifacts import ArtifactLayout, join
from kubeloop.operator import builders
from kubeloop.operator.names import child_name
from kubeloop.operator.settings import OperatorSettings

SERVED_BY_PREFIX = "served-by.kubeloop.io/"
#: on a cleanup Job: the name of the ModelDeployment or Dataset whose retention made it
GC_FOR_LABEL = "kubeloop.io/gc-for"


@dataclass(frozen=True)
class Pruning:
    """The versions to delete and the artifact folders that go with them."""

    versions: tuple[str, ...]
    folders: tuple[str, ...]


def _served_elsewhere(mv: dict[str, Any], md_name: str) -> bool:
    labels = mv["metadata"].get("labels") or {}
    own = builders.served_by_label(md_name)
    return any(k.startswith(SERVED_BY_PREFIX) and k != own for k in labels)


def _folder(mv: dict[str, Any]) -> str | None:
    uri = ((mv.get("spec") or {}).get("artifact") or {}).get("uri")
    return ArtifactLayout.model_dir(str(uri)) if uri else None


def prune(
    versions: Iterable[dict[str, Any]],
    keep: int,
    protected: set[str],
    md_name: str,
    prefix: str,
) -> Pruning:
    """Which of the model's ``versions`` go: beyond the newest ``keep`` (by version number),
    neither ``protected`` (this deployment's served and pinned names) nor served by another
    deployment. A folder goes only when it lies under ``prefix`` (the store's model folders
    of the namespace: a version registered elsewhere keeps its files) and no kept version
    points into it."""
    ordered = sorted(versions, key=lambda mv: int(mv["spec"]["version"]), reverse=True)
    gone = [
        mv
        for mv in ordered[keep:]
        if mv["metadata"]["name"] not in protected and not _served_elsewhere(mv, md_name)
    ]
    names = {mv["metadata"]["name"] for mv in gone}
    kept_folders = {_folder(mv) for mv in ordered if mv["metadata"]["name"] not in names}
    folders = sorted(
        {f for mv in gone if (f := _folder(mv)) and f.startswith(prefix) and f not in kept_folders}
    )
    return Pruning(tuple(sorted(names)), tuple(folders))


def prune_snapshots(
    history: list[dict[str, Any]], keep: int, referenced: set[str], prefix: str
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """A Dataset's ``history`` (newest first) cut to the newest ``keep`` entries plus every
    one a ModelVersion's lineage names (``referenced`` versions), and the snapshot folders
    of the entries cut (those under ``prefix``, the Dataset's own snapshot folder)."""
    kept = [h for i, h in enumerate(history) if i < keep or h.get("version") in referenced]
    cut = [h for h in history if h not in kept]
    folders = {ArtifactLayout.model_dir(str(h["snapshotUri"])) for h in cut if h.get("snapshotUri")}
    kept_folders = {
        ArtifactLayout.model_dir(str(h["snapshotUri"])) for h in kept if h.get("snapshotUri")
    }
    return kept, tuple(sorted(f for f in folders - kept_folders if f.startswith(prefix)))


def datasets_prefix(settings: OperatorSettings, namespace: str, name: str) -> str:
    """Where one Dataset's snapshots live (the only place its cleanup Job may delete)."""
    return join(settings.artifact_root, "datasets", namespace, name) + "/"


def models_prefix(settings: OperatorSettings, namespace: str) -> str:
    """The only place a cleanup Job may delete from: the namespace's model folders."""
    return join(settings.artifact_root, "models", namespace) + "/"


def cleanup_job(
    owner: dict[str, Any],
    folders: tuple[str, ...],
    settings: OperatorSettings,
    prefix: str | None = None,
) -> dict[str, Any]:
    """The Job deleting ``folders`` (under ``prefix``, by default the namespace's model
    folders); named by them, so a retry or a restart makes no twin."""
    digest = hashlib.sha256("\n".join(folders).encode()).hexdigest()[:10]
    name = owner["metadata"]["name"]
    prefix = prefix or models_prefix(settings, owner["metadata"]["namespace"])
    template = builders.JobTemplate(
        name=child_name(name, f"gc-{digest}"),
        # not the owner kind's own label: a cleanup pod is neither a serving nor a snapshot pod
        labels=builders.labels("gc", **{GC_FOR_LABEL: name}),
        args=["gc-artifacts", "--under", prefix, *folders],
        image=settings.trainer_image,
        resources=settings.trainer_resources,
        backoff_limit=2,
        active_deadline_seconds=600,
    )
    job = builders.build_job(owner, template, settings)
    job["spec"]["ttlSecondsAfterFinished"] = 3600  # one per pruning; nothing reads it after
    return job
