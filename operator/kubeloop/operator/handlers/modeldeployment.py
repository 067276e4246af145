"""ModelDeployment: serve the chosen ModelVersion and walk new versions through canary steps.

The rollout is a small state machine kept in ``status`` (stable version, canary
version, step, when the step began), so every pass decides from the object
alone and a restarted operator carries on where the last one stopped.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import kopf

from kubeloop.api.base import API_VERSION, GROUP, VERSION, duration_seconds
from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.operator import builders
from kubeloop.operator.conditions import is_true, now
from kubeloop.operator.handlers.common import (
    Context,
    Reconcile,
    parse_spec,
    run_reconcile,
    versions_of,
)
from kubeloop.operator.settings import OperatorSettings

KIND = "ModelDeployment"
PROMOTE = "kubeloop.io/promote"
ABORT = "kubeloop.io/abort"
_SETTINGS = OperatorSettings()


def choose_version(spec: ModelDeploymentSpec, ready: dict[int, dict[str, Any]]) -> int | None:
    """The version to serve: the pinned one if Ready, else the newest Ready one."""
    if spec.version.policy == "Pinned":
        return spec.version.pinned if spec.version.pinned in ready else None
    return max(ready, default=None)


def _elapsed(since: str | None) -> float:
    if not since:
        return 0.0
    started = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - started).total_seconds()


def deployment_ready(dep: dict[str, Any] | None) -> bool:
    """Rolled out, as ``kubectl rollout status`` means it: every replica runs the current
    template and is available, and no pod of an older template is left (during a rolling
    update the old ready pods would otherwise make a half-done rollout look ready)."""
    if dep is None:
        return False
    status = dep.get("status") or {}
    want = int((dep.get("spec") or {}).get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    return (
        status.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
        and updated >= want
        and int(status.get("replicas") or 0) <= updated
        and int(status.get("availableReplicas") or 0) >= want
    )


def advance(
    spec: ModelDeploymentSpec,
    status: dict[str, Any],
    target: int,
    annotations: dict[str, str],
    canary_ready: bool,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The next rollout state and the events it implies (pure).

    ``status`` holds ``stableVersion``, ``canaryVersion``, ``canaryStep``,
    ``stepStartedTime`` and ``abortedVersion``; the result has the same keys.
    """
    state = {
        k: status.get(k)
        for k in (
            "stableVersion",
            "canaryVersion",
            "canaryStep",
            "stepStartedTime",
            "abortedVersion",
        )
    }
    events: list[tuple[str, str]] = []
    stable = state["stableVersion"]
    if stable is None or (spec.canary is None and target != stable):
        if stable is not None:
            events.append(("RollingUpdate", f"version {stable} -> {target}"))
        state.update(
            stableVersion=target, canaryVersion=None, canaryStep=None, stepStartedTime=None
        )
        return state, events
    if target == stable or target == state["abortedVersion"]:
        if state["canaryVersion"] is not None:
            events.append(
                ("CanaryRemoved", f"version {state['canaryVersion']} is no longer wanted")
            )
        state.update(canaryVersion=None, canaryStep=None, stepStartedTime=None)
        return state, events
    assert spec.canary is not None
    steps = spec.canary.steps
    if state["canaryVersion"] != target:
        # the first step's pause starts once the canary is ready and gets its share
        state.update(canaryVersion=target, canaryStep=0, stepStartedTime=None)
        events.append(("CanaryStarted", f"version {target} at {steps[0].weight}%"))
        return state, events
    if annotations.get(ABORT) == "true":
        events.append(("CanaryAborted", f"version {target}: all traffic back to {stable}"))
        state.update(
            abortedVersion=target, canaryVersion=None, canaryStep=None, stepStartedTime=None
        )
        return state, events
    step = int(state["canaryStep"] or 0)
    if state["stepStartedTime"] is None and canary_ready:
        state["stepStartedTime"] = now()
    held = state["stepStartedTime"] is not None and _elapsed(
        state["stepStartedTime"]
    ) >= duration_seconds(steps[step].pause)
    if annotations.get(PROMOTE) == "true" or (held and canary_ready and step == len(steps) - 1):
        events.append(("Promoted", f"version {target} is now stable"))
        state.update(
            stableVersion=target, canaryVersion=None, canaryStep=None, stepStartedTime=None
        )
    elif held and canary_ready:
        state.update(canaryStep=step + 1, stepStartedTime=now())
        events.append(("CanaryStep", f"version {target} at {steps[step + 1].weight}%"))
    return state, events


def reconcile(ctx: Context, rec: Reconcile) -> None:
    spec = parse_spec(ModelDeploymentSpec, rec)
    kube, settings = ctx.kube, ctx.settings
    names = builders.serving_names(rec.name)
    versions = versions_of(kube, rec.namespace, spec.model_name)
    ready = {int(mv["spec"]["version"]): mv for mv in versions if is_true(mv.get("status"))}
    target = choose_version(spec, ready)
    if target is None and rec.status.get("stableVersion") not in ready:
        wanted = (
            f"version {spec.version.pinned}" if spec.version.policy == "Pinned" else "a version"
        )
        rec.status["phase"] = "Pending"
        rec.condition(
            "Ready",
            False,
            "NoReadyVersion",
            f"waiting for {wanted} of {spec.model_name} to be Ready",
        )
        return
    if target is None:
        target = int(rec.status["stableVersion"])
    annotations = dict(rec.body["metadata"].get("annotations") or {})
    canary_dep = kube.get("apps/v1", "Deployment", rec.namespace, names["canary"])
    canary_ready = deployment_ready(canary_dep)
    state, events = advance(spec, rec.status, target, annotations, canary_ready)
    rec.status.update(state)
    for reason, message in events:
        rec.info(reason=reason, message=message)
    handled = {k: None for k in (PROMOTE, ABORT) if k in annotations}
    if handled:  # one-shot commands: acted on, so take them off
        kube.patch_metadata(API_VERSION, KIND, rec.namespace, rec.name, {"annotations": handled})

    stable_mv = ready.get(state["stableVersion"]) or next(
        (mv for mv in versions if int(mv["spec"]["version"]) == state["stableVersion"]), None
    )
    if stable_mv is None:
        rec.condition("Ready", False, "VersionMissing", f"version {state['stableVersion']} is gone")
        rec.status["phase"] = "Degraded"
        return
    canary_version = state["canaryVersion"]
    step = state["canaryStep"]
    # The stable pods forward only to a canary whose pods are ready: before that its
    # Service may have no endpoints, or not be programmed on the nodes yet.
    weight = (
        spec.canary.steps[step].weight
        if canary_version is not None and spec.canary and step is not None and canary_ready
        else 0
    )
    replicas = spec.replicas
    stable_dep = builders.build_serving_deployment(
        rec.body, spec, stable_mv, "stable", replicas, settings
    )
    if spec.autoscaling is not None:
        del stable_dep["spec"]["replicas"]  # the autoscaler owns it
    _apply(ctx, stable_dep)
    _apply(ctx, builders.build_service(rec.body, "stable", settings))
    _apply(ctx, builders.build_routing_config(rec.body, weight, canary_version, settings))
    hpa = builders.build_hpa(rec.body, spec)
    if hpa is not None:
        _apply(ctx, hpa)
    else:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", rec.namespace, names["stable"])
    if canary_version is not None:
        canary_replicas = max(1, math.ceil(replicas * weight / 100))
        canary_mv = ready[canary_version]
        _apply(
            ctx,
            builders.build_serving_deployment(
                rec.body, spec, canary_mv, "canary", canary_replicas, settings
            ),
        )
        _apply(ctx, builders.build_service(rec.body, "canary", settings))
    else:
        kube.delete("apps/v1", "Deployment", rec.namespace, names["canary"])
        kube.delete("v1", "Service", rec.namespace, names["canary_service"])

    rec.status.update(canaryWeight=weight, url=builders.service_url(rec.body, settings))
    serving = deployment_ready(kube.get("apps/v1", "Deployment", rec.namespace, names["stable"]))
    if canary_version is not None:
        rec.status["phase"] = "Progressing"
        rec.condition("Progressing", True, "Canary", f"version {canary_version} at {weight}%")
    else:
        rec.status["phase"] = "Serving" if serving else "Pending"
        aborted = state["abortedVersion"] is not None and state["abortedVersion"] == target
        rec.condition(
            "Progressing",
            False,
            "CanaryAborted" if aborted else "Complete",
            f"canary of version {target} aborted"
            if aborted
            else f"serving version {state['stableVersion']}",
        )
    rec.condition(
        "Ready",
        serving,
        "Serving" if serving else "Deploying",
        f"version {state['stableVersion']}" + ("" if serving else ": waiting for ready pods"),
    )
    rec.condition("Degraded", False, "AsExpected")


def _apply(ctx: Context, obj: dict[str, Any]) -> None:
    ctx.kube.apply(obj)


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="spec")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="metadata.annotations")
@kopf.timer(GROUP, VERSION, "modeldeployments", interval=_SETTINGS.resync_seconds, initial_delay=1)
def reconcile_modeldeployment(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)
