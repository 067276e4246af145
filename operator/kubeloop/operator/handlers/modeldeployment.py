"""ModelDeployment: serve the chosen ModelVersion and walk new versions through canary steps.

The rollout is a small state machine kept in ``status`` (stable version, canary
version, step, when the step began), so every pass decides from the object
alone and a restarted operator carries on where the last one stopped.
:func:`advance` decides (pure, from the stored state and the time); the
reconcile applies its decision and the children :func:`builders.serving_children`
describes.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, NamedTuple

import kopf

from kubeloop.api.base import API_VERSION, GROUP, VERSION, duration_seconds
from kubeloop.api.v1alpha1 import CanaryStep, ModelDeploymentSpec
from kubeloop.operator import builders
from kubeloop.operator.conditions import is_true
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    Context,
    Reconcile,
    parse_spec,
    run_reconcile,
    versions_of,
)
from kubeloop.operator.timestamps import parse, rfc3339

KIND = "ModelDeployment"
PROMOTE = "kubeloop.io/promote"
ABORT = "kubeloop.io/abort"
#: The status keys the rollout state machine owns.
ROLLOUT_KEYS = ("stableVersion", "canaryVersion", "canaryStep", "stepStartedTime", "abortedVersion")
_NO_CANARY: dict[str, Any] = {"canaryVersion": None, "canaryStep": None, "stepStartedTime": None}

#: An Event to post: (reason, message).
Event = tuple[str, str]


class Rollout(NamedTuple):
    """The next rollout state (the :data:`ROLLOUT_KEYS`) and the Events that report it."""

    state: dict[str, Any]
    events: list[Event]


def choose_version(spec: ModelDeploymentSpec, ready: dict[int, dict[str, Any]]) -> int | None:
    """The version to serve: the pinned one if Ready, else the newest Ready one."""
    if spec.version.policy == "Pinned":
        return spec.version.pinned if spec.version.pinned in ready else None
    return max(ready, default=None)


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
    now: datetime,
) -> Rollout:
    """The next rollout state and the Events it implies (pure).

    From the stored state in ``status``, the version to serve, the one-shot
    promote/abort annotations, whether the canary's pods are ready, and the time.
    """
    state = {k: status.get(k) for k in ROLLOUT_KEYS}
    stable, canary = state["stableVersion"], state["canaryVersion"]
    if stable is None or (spec.canary is None and target != stable):
        events = [] if stable is None else [("RollingUpdate", f"version {stable} -> {target}")]
        return Rollout({**state, **_NO_CANARY, "stableVersion": target}, events)
    if target in (stable, state["abortedVersion"]):
        gone = (
            [] if canary is None else [("CanaryRemoved", f"version {canary} is no longer wanted")]
        )
        return Rollout({**state, **_NO_CANARY}, gone)
    assert spec.canary is not None
    steps = spec.canary.steps
    if canary != target:
        # the first step's pause starts once the canary is ready and gets its share
        started = {**state, "canaryVersion": target, "canaryStep": 0, "stepStartedTime": None}
        return Rollout(started, [("CanaryStarted", f"version {target} at {steps[0].weight}%")])
    if annotations.get(ABORT) == "true":
        aborted = {**state, **_NO_CANARY, "abortedVersion": target}
        return Rollout(
            aborted, [("CanaryAborted", f"version {target}: all traffic back to {stable}")]
        )
    return _walk(state, steps, annotations.get(PROMOTE) == "true", canary_ready, now)


def _walk(
    state: dict[str, Any],
    steps: list[CanaryStep],
    promote: bool,
    canary_ready: bool,
    now: datetime,
) -> Rollout:
    """The canary at its step: hold it, take the next step, or promote it.

    A step's pause runs from when the canary is ready; it advances only while
    the canary stays ready, and the last step's end (or ``promote``) makes it stable.
    """
    target, step = state["canaryVersion"], int(state["canaryStep"] or 0)
    if state["stepStartedTime"] is None and canary_ready:
        state = {**state, "stepStartedTime": rfc3339(now)}
    started = parse(state["stepStartedTime"])
    held = started is not None and (now - started).total_seconds() >= duration_seconds(
        steps[step].pause
    )
    if promote or (held and canary_ready and step == len(steps) - 1):
        promoted = {**state, **_NO_CANARY, "stableVersion": target}
        return Rollout(promoted, [("Promoted", f"version {target} is now stable")])
    if held and canary_ready:
        stepped = {**state, "canaryStep": step + 1, "stepStartedTime": rfc3339(now)}
        return Rollout(stepped, [("CanaryStep", f"version {target} at {steps[step + 1].weight}%")])
    return Rollout(state, [])


def canary_weight(spec: ModelDeploymentSpec, state: dict[str, Any], canary_ready: bool) -> int:
    """The canary's share of requests: its step's weight, once its pods are ready.

    The stable pods forward only to a canary whose pods are ready: before that its
    Service may have no endpoints, or not be programmed on the nodes yet.
    """
    step = state["canaryStep"]
    if state["canaryVersion"] is None or spec.canary is None or step is None or not canary_ready:
        return 0
    return spec.canary.steps[int(step)].weight


def _target(rec: Reconcile, spec: ModelDeploymentSpec, ready: dict[int, Any]) -> int | None:
    """The version to roll to: the chosen one, else the stable one while it is Ready."""
    target = choose_version(spec, ready)
    if target is not None:
        return target
    stable = rec.status.get("stableVersion")
    if stable in ready:
        return int(stable)
    wanted = f"version {spec.version.pinned}" if spec.version.policy == "Pinned" else "a version"
    rec.status["phase"] = "Pending"
    rec.ready(False, "NoReadyVersion", f"waiting for {wanted} of {spec.model_name} to be Ready")
    return None


def _roll(
    ctx: Context, rec: Reconcile, spec: ModelDeploymentSpec, target: int, canary_ready: bool
) -> dict[str, Any]:
    """Decide the rollout's next state and apply the decision: status, Events, annotations."""
    annotations = dict(rec.body["metadata"].get("annotations") or {})
    now = datetime.now(UTC)
    state, events = advance(spec, rec.status, target, annotations, canary_ready, now)
    rec.status.update(state)
    for reason, message in events:
        rec.info(reason=reason, message=message)
    handled = {k: None for k in (PROMOTE, ABORT) if k in annotations}
    if handled:  # one-shot commands: acted on, so take them off
        patch = {"annotations": handled}
        ctx.kube.patch_metadata(API_VERSION, KIND, rec.namespace, rec.name, patch)
    return state


def _version(
    versions: list[dict[str, Any]], ready: dict[int, dict[str, Any]], number: int
) -> dict[str, Any] | None:
    """ModelVersion ``number``: the Ready one, else any (a stable version stays served)."""
    return ready.get(number) or next(
        (mv for mv in versions if int(mv["spec"]["version"]) == number), None
    )


def _apply(ctx: Context, children: list[dict[str, Any] | builders.Absent]) -> None:
    for child in children:
        if isinstance(child, builders.Absent):
            ctx.kube.delete(child.api_version, child.kind, child.namespace, child.name)
        else:
            ctx.kube.apply(child)


def _ensure_token_secret(ctx: Context, rec: Reconcile) -> None:
    """The serving pods' bearer token: a random one in a Secret created once; an existing
    Secret is kept as it is (a reconcile or a restart never replaces the token)."""
    secret = builders.build_feedback_token_secret(rec.body, secrets.token_urlsafe(32))
    if ctx.kube.create_if_absent(secret):
        rec.info(
            reason="TokenCreated", message=f"feedback token in Secret {secret['metadata']['name']}"
        )
    rec.status["feedbackTokenSecret"] = secret["metadata"]["name"]


def _report(rec: Reconcile, state: dict[str, Any], target: int, weight: int, serving: bool) -> None:
    """Phase and conditions from the rollout state and whether the stable pods serve."""
    stable, canary = state["stableVersion"], state["canaryVersion"]
    if canary is not None:
        rec.status["phase"] = "Progressing"
        rec.condition("Progressing", True, "Canary", f"version {canary} at {weight}%")
    elif state["abortedVersion"] is not None and state["abortedVersion"] == target:
        rec.status["phase"] = "Serving" if serving else "Pending"
        rec.condition("Progressing", False, "CanaryAborted", f"canary of version {target} aborted")
    else:
        rec.status["phase"] = "Serving" if serving else "Pending"
        rec.condition("Progressing", False, "Complete", f"serving version {stable}")
    waiting = "" if serving else ": waiting for ready pods"
    rec.ready(serving, "Serving" if serving else "Deploying", f"version {stable}{waiting}")
    rec.condition("Degraded", False, "AsExpected")


def reconcile(ctx: Context, rec: Reconcile) -> None:
    """Choose the version, move the rollout on, and make the children match."""
    spec = parse_spec(ModelDeploymentSpec, rec)
    _ensure_token_secret(ctx, rec)
    names = builders.serving_names(rec.name)
    versions = versions_of(ctx.kube, rec.namespace, spec.model_name)
    ready = {int(mv["spec"]["version"]): mv for mv in versions if is_true(mv.get("status"))}
    target = _target(rec, spec, ready)
    if target is None:
        return
    canary_dep = ctx.kube.get("apps/v1", "Deployment", rec.namespace, names["canary"])
    canary_ready = deployment_ready(canary_dep)
    state = _roll(ctx, rec, spec, target, canary_ready)
    stable_mv = _version(versions, ready, state["stableVersion"])
    if stable_mv is None:
        rec.ready(False, "VersionMissing", f"version {state['stableVersion']} is gone")
        rec.status["phase"] = "Degraded"
        return
    weight = canary_weight(spec, state, canary_ready)
    canary = state["canaryVersion"]
    canary_mv = ready[canary] if canary is not None else None
    _apply(
        ctx,
        builders.serving_children(rec.body, spec, stable_mv, canary_mv, weight, ctx.settings),
    )
    rec.status.update(canaryWeight=weight, url=builders.service_url(rec.body, ctx.settings))
    stable_dep = ctx.kube.get("apps/v1", "Deployment", rec.namespace, names["stable"])
    _report(rec, state, target, weight, deployment_ready(stable_dep))


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="spec")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="metadata.annotations")
@kopf.timer(
    GROUP, VERSION, "modeldeployments", interval=IMPORT_SETTINGS.resync_seconds, initial_delay=1
)
def reconcile_modeldeployment(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)
