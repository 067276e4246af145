"""ModelVersion: verify that the artifact exists and hashes to the recorded sha256; a bare
model.onnx (no inputs or outputs in spec, no model.json beside it) is also inspected by a
Job that reads its graph into status (the spec stays as the user wrote it)."""

from __future__ import annotations

from typing import Any

import kopf

from kubeloop.api.base import API_VERSION, GROUP, VERSION
from kubeloop.api.v1alpha1 import ModelVersionSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.operator import builders, metrics
from kubeloop.operator.conditions import get_condition, is_true
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    Context,
    Reconcile,
    parse_spec,
    run_reconcile,
)
from kubeloop.operator.handlers.jobs import job_state, outcome
from kubeloop.operator.store import StoreUnavailableError, read_json, sha256_of

KIND = "ModelVersion"
VERIFIED = "Verified"
#: Annotation that clears a rollback's ``Rejected=True`` (Latest may choose the version again).
CLEAR_REJECTION = "kubeloop.io/clear-rejection"
REJECTED = "Rejected"


def _unverified(rec: Reconcile, verified: bool | None, reason: str, message: str) -> None:
    """Not verified (False), or not verifiable now (None): never Ready, so never served."""
    rec.condition(VERIFIED, verified, reason, message)
    rec.ready(False, reason, message)


def reconcile(ctx: Context, rec: Reconcile) -> None:
    """Hash the artifact until it matches the spec's sha256; once it does, nothing more
    (but a ``kubeloop.io/clear-rejection`` annotation is acted on whenever it appears)."""
    spec = parse_spec(ModelVersionSpec, rec)
    _clear_rejection(ctx, rec)
    _disown(ctx, rec)
    if rec.status.get("verifiedSha256") == spec.artifact.sha256:
        return  # the spec is immutable: once verified, always verified
    uri = spec.artifact.uri
    try:
        actual = sha256_of(uri)
    except FileNotFoundError:
        _unverified(rec, False, "ArtifactNotFound", f"{uri} does not exist")
        return  # the resync timer looks again
    except (OSError, StoreUnavailableError) as exc:
        _unverified(rec, None, "StoreUnreachable", str(exc))
        return
    if actual != spec.artifact.sha256:
        message = f"sha256 of {uri} is {actual}, spec says {spec.artifact.sha256}"
        _unverified(rec, False, "DigestMismatch", message)
        rec.warn(reason="DigestMismatch", message=message)
        return
    rec.condition(VERIFIED, True, "DigestMatches", f"sha256 {actual[:12]}…")
    if _bare(rec) and not _inspected(ctx, rec):
        return  # Ready once the inspection Job has read the graph
    rec.status["verifiedSha256"] = actual
    rec.ready(True, "Verified", f"{spec.model_name} version {spec.version}")
    rec.info(reason="Verified", message=f"artifact {uri} verified")


def _bare(rec: Reconcile) -> bool:
    """A version naming no inputs or outputs, beside no ``model.json``: only the graph says
    what it takes, and the operator (no onnxruntime in its image) has a Job read it."""
    if not builders.needs_inspection(rec.body["spec"]) or rec.status.get("inputs"):
        return False
    uri = rec.body["spec"]["artifact"]["uri"]
    return read_json(ArtifactLayout.sibling(uri, ArtifactLayout.METADATA)) is None


def _inspected(ctx: Context, rec: Reconcile) -> bool:
    """Run the inspection Job (``kubeloop inspect`` in the trainer image) once per digest and
    copy the inputs and outputs it reports into status; False until it has."""
    name = builders.inspect_job_name(rec.body)
    job = ctx.kube.read("batch/v1", "Job", rec.namespace, name)
    if job is None:
        ctx.kube.create(builders.build_inspect_job(rec.body, ctx.settings))
        metrics.CHILDREN_CREATED.labels(kind="Job").inc()
        rec.info(reason="InspectionStarted", message=f"Job {name} reads the model's graph")
    if job is None or job_state(job) == "Running":
        rec.ready(False, "Inspecting", f"Job {name} reads the inputs and outputs of the graph")
        return False
    done = outcome(ctx.kube, job)
    found = done.result
    if done.state == "Succeeded" and found and found.inputs is not None and found.outputs:
        rec.status["inputs"] = [t.to_wire() for t in found.inputs]
        rec.status["outputs"] = [t.to_wire() for t in found.outputs]
        return True
    if (get_condition(rec.status, VERIFIED) or {}).get("reason") != "InspectionFailed":
        rec.warn(reason="InspectionFailed", message=done.reason)
    _unverified(rec, False, "InspectionFailed", done.reason)
    return False


@kopf.on.resume(GROUP, VERSION, "modelversions")
@kopf.on.create(GROUP, VERSION, "modelversions")
@kopf.on.update(GROUP, VERSION, "modelversions", field="metadata.annotations")
@kopf.timer(
    GROUP,
    VERSION,
    "modelversions",
    interval=IMPORT_SETTINGS.resync_seconds,
    when=lambda status, spec, annotations, **_: (
        status.get("verifiedSha256") != spec.get("artifact", {}).get("sha256")
        or CLEAR_REJECTION in annotations
    ),
)
@kopf.timer(
    GROUP,
    VERSION,
    "modelversions",
    id="store_tick",
    interval=IMPORT_SETTINGS.tick_seconds,
    when=lambda status, spec, **_: (
        status.get("verifiedSha256") != spec.get("artifact", {}).get("sha256")
    ),
)
def reconcile_modelversion(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)


def _disown(ctx: Context, rec: Reconcile) -> None:
    """Drop an owner reference to a TrainingJob (versions made before the registry outlived
    its jobs had one), so deleting the job never deletes the version."""
    owners = rec.body["metadata"].get("ownerReferences") or []
    kept = [
        o
        for o in owners
        if not (o.get("kind") == "TrainingJob" and str(o.get("apiVersion")).startswith(f"{GROUP}/"))
    ]
    if len(kept) != len(owners):
        patch = {"ownerReferences": kept or None}
        ctx.kube.patch_metadata(API_VERSION, KIND, rec.namespace, rec.name, patch)


def _clear_rejection(ctx: Context, rec: Reconcile) -> None:
    """The one-shot ``kubeloop.io/clear-rejection`` annotation: ``Rejected=False``, then off."""
    annotations = rec.body["metadata"].get("annotations") or {}
    if CLEAR_REJECTION not in annotations:
        return
    if annotations[CLEAR_REJECTION] == "true" and is_true(rec.status, REJECTED):
        rec.condition(REJECTED, False, "Cleared", f"rejection cleared by {CLEAR_REJECTION}")
        rec.info(reason="RejectionCleared", message="the version may be rolled out again")
    patch = {"annotations": {CLEAR_REJECTION: None}}
    ctx.kube.patch_metadata(API_VERSION, KIND, rec.namespace, rec.name, patch)
