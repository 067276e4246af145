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
from kubeloop.api.v1alpha1 import Canary, CanaryStep, ModelDeploymentSpec, VersionPolicy
from kubeloop.operator import analysis, builders, metrics, prometheus
from kubeloop.operator.conditions import is_true, set_condition
from kubeloop.operator.handlers import retention
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    Context,
    Reconcile,
    context,
    of_model,
    parse_spec,
    plain,
    run_reconcile,
    versions_of,
)
from kubeloop.operator.timestamps import parse, rfc3339

KIND = "ModelDeployment"
PROMOTE = "kubeloop.io/promote"
ABORT = "kubeloop.io/abort"
#: The condition a rolled-back ModelVersion carries (Latest skips it in every deployment).
REJECTED = "Rejected"
#: The status keys the rollout state machine owns.
ROLLOUT_KEYS = (
    "stableVersion",
    "canaryVersion",
    "canaryStep",
    "stepStartedTime",
    "abortedVersion",
    "canary",
    "canaryStartedTime",
    "canaryNotReadySince",
    "rolledBack",
)
_NO_CANARY: dict[str, Any] = {
    "canaryVersion": None,
    "canaryStep": None,
    "stepStartedTime": None,
    "canary": None,
    "canaryStartedTime": None,
    "canaryNotReadySince": None,
}

#: An Event to post: (reason, message).
Event = tuple[str, str]


class Rejection(NamedTuple):
    """A canary rolled back: the version to mark Rejected, and why."""

    version: int
    reason: str
    message: str


class Rollout(NamedTuple):
    """The next rollout state (the :data:`ROLLOUT_KEYS`), the Events that report it, and the
    version to reject when the canary was rolled back."""

    state: dict[str, Any]
    events: list[Event]
    rejection: Rejection | None = None


def choose_version(
    spec: ModelDeploymentSpec,
    ready: dict[int, dict[str, Any]],
    rejected: frozenset[int] = frozenset(),
) -> int | None:
    """The version to serve: the pinned one if Ready (even a Rejected one: pinning is the
    manual override), else the newest Ready one that is not Rejected."""
    return pick_version(spec.version, ready, rejected)


def pick_version(
    policy: VersionPolicy,
    ready: dict[int, dict[str, Any]],
    rejected: frozenset[int] = frozenset(),
) -> int | None:
    """The version a policy chooses among the Ready ones (a ModelDeployment's, or a
    BatchPrediction's ``modelRef.version``): see :func:`choose_version`."""
    if policy.policy == "Pinned":
        return policy.pinned if policy.pinned in ready else None
    return max((v for v in ready if v not in rejected), default=None)


def rejected_versions(versions: dict[int, dict[str, Any]]) -> frozenset[int]:
    """The versions whose ModelVersion carries ``Rejected=True``."""
    return frozenset(v for v, mv in versions.items() if is_true(mv.get("status"), REJECTED))


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


def still_serving(dep: dict[str, Any] | None, state: dict[str, Any]) -> bool:
    """A canary that was ready at its step (its pause has begun) keeps its share while it
    scales to the next step's replicas, as long as a pod of it is available: routing does
    not drop to 0 % and back for the moment the new pods start."""
    available = int(((dep or {}).get("status") or {}).get("availableReplicas") or 0)
    return state.get("stepStartedTime") is not None and available > 0


def advance(
    spec: ModelDeploymentSpec,
    status: dict[str, Any],
    target: int,
    annotations: dict[str, str],
    canary_ready: bool,
    now: datetime,
    direct: bool = False,
) -> Rollout:
    """The next rollout state and the Events it implies (pure).

    From the stored state in ``status`` (the canary analysis' state included), the
    version to serve, the one-shot promote/abort annotations, whether the canary's
    pods are ready, and the time. ``direct`` rolls ``target`` out without a canary
    (a Rejected version pinned by hand).
    """
    state = {k: status.get(k) for k in ROLLOUT_KEYS}
    stable, canary = state["stableVersion"], state["canaryVersion"]
    if stable is None or (target != stable and (spec.canary is None or direct)):
        events = [] if stable is None else [("RollingUpdate", f"version {stable} -> {target}")]
        rolled = {**state, **_NO_CANARY, "stableVersion": target, "rolledBack": None}
        return Rollout(rolled, events)
    if target in (stable, state["abortedVersion"]):
        gone = (
            [] if canary is None else [("CanaryRemoved", f"version {canary} is no longer wanted")]
        )
        return Rollout({**state, **_NO_CANARY}, gone)
    assert spec.canary is not None
    steps = spec.canary.steps
    if canary != target:
        # the first step's pause starts once the canary is ready and gets its share
        started = {
            **state,
            **_NO_CANARY,
            "canaryVersion": target,
            "canaryStep": 0,
            "canaryStartedTime": rfc3339(now),
            "canaryNotReadySince": rfc3339(now),
        }
        return Rollout(started, [("CanaryStarted", f"version {target} at {steps[0].weight}%")])
    if annotations.get(ABORT) == "true":
        aborted = {**state, **_NO_CANARY, "abortedVersion": target}
        return Rollout(
            aborted, [("CanaryAborted", f"version {target}: all traffic back to {stable}")]
        )
    state = _readiness_clock(state, canary_ready, now)
    failure = _failure(spec.canary, state, canary_ready, now)
    if failure is not None:
        return _rollback(state, target, *failure)
    passed = analysis.step_passed(spec.canary.analysis, state)
    return _walk(state, steps, annotations.get(PROMOTE) == "true", canary_ready, passed, now)


def _failure(
    canary: Canary, state: dict[str, Any], canary_ready: bool, now: datetime
) -> tuple[str, str] | None:
    """Why the canary must be rolled back now, as (reason, message), or None."""
    exhausted = analysis.exhausted(canary.analysis, state)
    if exhausted is not None:
        return "AnalysisFailed", exhausted
    since = parse(state["canaryNotReadySince"])
    deadline = duration_seconds(canary.progress_deadline)
    if not canary_ready and since is not None and (now - since).total_seconds() > deadline:
        return (
            "ProgressDeadlineExceeded",
            f"canary pods not ready within progressDeadline {canary.progress_deadline}",
        )
    return None


def _readiness_clock(state: dict[str, Any], canary_ready: bool, now: datetime) -> dict[str, Any]:
    """Start the progress-deadline clock when the canary is seen not ready, stop it when
    it is ready: a canary that was ready and then loses its pods (a template change, a
    node gone) is rolled back at the deadline too, instead of holding its step forever."""
    if canary_ready:
        return {**state, "canaryNotReadySince": None}
    if state.get("canaryNotReadySince") is None:
        started = state.get("canaryStartedTime") if state["stepStartedTime"] is None else None
        return {**state, "canaryNotReadySince": started or rfc3339(now)}
    return state


def _rollback(state: dict[str, Any], target: int, reason: str, message: str) -> Rollout:
    """All traffic back to stable, the canary gone, the version to be marked Rejected."""
    stable = state["stableVersion"]
    text = f"version {target} rolled back, all traffic to version {stable}: {message}"
    failed = analysis.analysis_state(state).get("failedChecks")
    record = {"version": target, "reason": reason, "message": text, "failedChecks": failed}
    rolled = {**state, **_NO_CANARY, "rolledBack": record}
    return Rollout(rolled, [("RolledBack", text)], Rejection(target, reason, text))


def _walk(
    state: dict[str, Any],
    steps: list[CanaryStep],
    promote: bool,
    canary_ready: bool,
    passed: bool,
    now: datetime,
) -> Rollout:
    """The canary at its step: hold it, take the next step, or promote it.

    A step's pause runs from when the canary is ready; it advances only while
    the canary stays ready and its analysis (if any) passed after the step began,
    and the last step's end (or ``promote``) makes it stable.
    """
    target, step = state["canaryVersion"], int(state["canaryStep"] or 0)
    if state["stepStartedTime"] is None and canary_ready:
        state = {**state, "stepStartedTime": rfc3339(now)}
    started = parse(state["stepStartedTime"])
    held = started is not None and (now - started).total_seconds() >= duration_seconds(
        steps[step].pause
    )
    go = held and canary_ready and passed
    if promote or (go and step == len(steps) - 1):
        promoted = {**state, **_NO_CANARY, "stableVersion": target, "rolledBack": None}
        return Rollout(promoted, [("Promoted", f"version {target} is now stable")])
    if go:
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


def _target(
    rec: Reconcile, spec: ModelDeploymentSpec, ready: dict[int, Any], rejected: frozenset[int]
) -> int | None:
    """The version to roll to: the chosen one, else the stable one while it is Ready."""
    target = choose_version(spec, ready, rejected)
    if target is not None:
        return target
    stable = rec.status.get("stableVersion")
    if stable in ready:
        return int(stable)
    wanted = f"version {spec.version.pinned}" if spec.version.policy == "Pinned" else "a version"
    rec.status["phase"] = "Pending"
    rec.ready(False, "NoReadyVersion", f"waiting for {wanted} of {spec.model_name} to be Ready")
    return None


def _run_analysis(
    ctx: Context,
    rec: Reconcile,
    spec: ModelDeploymentSpec,
    canary_mv: dict[str, Any] | None,
    canary_ready: bool,
    now: datetime,
) -> None:
    """Take a due analysis check of the current canary and fold it into ``status.canary``."""
    canary = spec.canary
    if canary is None or canary.analysis is None or canary_mv is None:
        return
    weight = canary_weight(spec, rec.status, canary_ready)
    if not analysis.check_due(canary.analysis, rec.status, weight, now):
        return
    version = int(canary_mv["spec"]["version"])
    target = analysis.Target(
        rec.namespace,
        rec.name,
        version,
        int(rec.status["stableVersion"]),
        str(canary_mv["spec"].get("task") or "classification"),
    )
    result = prometheus.measure(prometheus.PrometheusClient(ctx.settings), canary.analysis, target)
    rec.status["canary"] = analysis.analyse(canary.analysis, rec.status, result, weight, now)
    metrics.ANALYSIS_CHECKS.labels(result=result.result).inc()
    if result.result == "Fail":
        failed = rec.status["canary"]["analysis"]["failedChecks"]
        limit = canary.analysis.failure_limit
        rec.warn("AnalysisCheckFailed", f"version {version} ({failed}/{limit}): {result.summary()}")


def _reject(ctx: Context, rec: Reconcile, mv: dict[str, Any] | None, rejection: Rejection) -> None:
    """Mark the rolled-back ModelVersion ``Rejected=True`` (Latest skips it everywhere)."""
    if mv is None:
        return
    message = f"ModelDeployment {rec.namespace}/{rec.name}: {rejection.message}"
    conditions = set_condition(
        list((mv.get("status") or {}).get("conditions") or []),
        REJECTED,
        "True",
        rejection.reason,
        message,
        int(mv["metadata"].get("generation") or 0),
    )
    ctx.kube.patch_status(
        "ModelVersion", rec.namespace, mv["metadata"]["name"], {"conditions": conditions}
    )


def _roll(
    ctx: Context,
    rec: Reconcile,
    spec: ModelDeploymentSpec,
    target: int,
    canary_ready: bool,
    versions: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """Decide the rollout's next state and apply the decision: status, Events, annotations,
    and the rejection of a rolled-back version."""
    annotations = dict(rec.body["metadata"].get("annotations") or {})
    now = datetime.now(UTC)
    if rec.status.get("canaryVersion") == target:
        _run_analysis(ctx, rec, spec, versions.get(target), canary_ready, now)
    direct = spec.version.policy == "Pinned" and target in rejected_versions(versions)
    state, events, rejection = advance(
        spec, rec.status, target, annotations, canary_ready, now, direct
    )
    if rejection is not None:
        state["rolledBack"] = {**state["rolledBack"], "generation": rec.generation}
        _reject(ctx, rec, versions.get(rejection.version), rejection)
    rec.status.update(state)
    for reason, message in events:
        if reason == "RolledBack":
            rec.warn(reason=reason, message=message)
        else:
            rec.info(reason=reason, message=message)
        result = {"Promoted": "promoted", "RolledBack": "rolled_back"}.get(reason)
        if result is not None:
            metrics.ROLLOUTS.labels(result=result).inc()
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


def _route_gone(rec: Reconcile, spec: ModelDeploymentSpec) -> list[builders.Absent]:
    """The HTTPRoute of a deployment routed by a Gateway, once it is not (only then: a
    cluster without the Gateway API never hears of the kind)."""
    gateway = builders.routed_by_gateway(spec)
    had = rec.status.get("httpRoute")
    rec.status["httpRoute"] = rec.name if gateway else None
    if gateway or not had:
        return []
    return [builders.Absent(*builders.HTTP_ROUTE, rec.namespace, str(had))]


def _ensure_token_secret(ctx: Context, rec: Reconcile) -> None:
    """The serving pods' bearer token: a random one in a Secret created once; an existing
    Secret is kept as it is (a reconcile or a restart never replaces the token)."""
    secret = builders.build_feedback_token_secret(rec.body, secrets.token_urlsafe(32))
    key = f"{rec.namespace}/{secret['metadata']['name']}"
    if key not in ctx.present and ctx.kube.create_if_absent(secret):
        rec.info(
            reason="TokenCreated", message=f"feedback token in Secret {secret['metadata']['name']}"
        )
    ctx.present.add(key)  # known to exist: not created (a write) again by this process
    rec.status["feedbackTokenSecret"] = secret["metadata"]["name"]


def _label_served(
    ctx: Context, rec: Reconcile, versions: list[dict[str, Any]], served: dict[str, str]
) -> None:
    """Keep ``served-by.kubeloop.io/<deployment>`` on exactly the versions served now (the
    chart's admission policy refuses to delete those), and name them in status."""
    previous = rec.status.get("servedModelVersions") or []
    relabel(ctx, rec.namespace, rec.name, versions, previous, served)
    rec.status["servedModelVersions"] = sorted(served)


def relabel(
    ctx: Context,
    namespace: str,
    md_name: str,
    versions: list[dict[str, Any]],
    previous: list[str],
    served: dict[str, str],
) -> None:
    """Patch the ``served-by`` label of deployment ``md_name`` onto the ``served`` versions
    (name -> role) and off the ``previous`` ones no longer served."""
    labels = {mv["metadata"]["name"]: mv["metadata"].get("labels") or {} for mv in versions}
    key = builders.served_by_label(md_name)
    for name, role in builders.served_label_patches(md_name, previous, served, labels).items():
        patched = ctx.kube.patch_metadata(
            API_VERSION, "ModelVersion", namespace, name, {"labels": {key: role}}
        )
        if patched is not None:  # the next pass sees the label, though the watch lags
            ctx.versions.seen(patched)


def _progress(state: dict[str, Any], weight: int) -> tuple[str, str]:
    """The Progressing condition's reason and message for a running canary: the last
    analysis check's outcome, naming the metrics without data when weight is held."""
    last = analysis.analysis_state(state)
    base = f"version {state['canaryVersion']} at {weight}%"
    if last.get("lastResult") == "NoData":
        missing = [r for r in last.get("results") or [] if r.get("result") == "NoData"]
        names = "; ".join(str(r.get("message")) for r in missing)
        return "AnalysisNoData", f"{base}, held: {names}"
    if last.get("lastResult") == "Fail":
        return "AnalysisFailing", f"{base}, {last.get('failedChecks')} failed check(s)"
    return "Canary", base


def _degraded(rec: Reconcile, state: dict[str, Any]) -> None:
    """Degraded while the last rollback stands: until a later promotion or a spec change."""
    rolled = state.get("rolledBack")
    if rolled and rolled.get("generation") == rec.generation:
        rec.condition("Degraded", True, str(rolled.get("reason")), str(rolled.get("message")))
        return
    if rolled:
        rec.status["rolledBack"] = None
    rec.condition("Degraded", False, "AsExpected")


def _report(rec: Reconcile, state: dict[str, Any], target: int, weight: int, serving: bool) -> None:
    """Phase and conditions from the rollout state and whether the stable pods serve."""
    stable, canary = state["stableVersion"], state["canaryVersion"]
    if canary is not None:
        rec.status["phase"] = "Progressing"
        rec.condition("Progressing", True, *_progress(state, weight))
    elif state["abortedVersion"] is not None and state["abortedVersion"] == target:
        rec.status["phase"] = "Serving" if serving else "Pending"
        rec.condition("Progressing", False, "CanaryAborted", f"canary of version {target} aborted")
    elif state.get("rolledBack") and rec.status.get("rolledBack"):
        rec.status["phase"] = "Serving" if serving else "Pending"
        rolled = state["rolledBack"]
        rec.condition("Progressing", False, "RolledBack", str(rolled.get("message")))
    else:
        rec.status["phase"] = "Serving" if serving else "Pending"
        rec.condition("Progressing", False, "Complete", f"serving version {stable}")
    waiting = "" if serving else ": waiting for ready pods"
    rec.ready(serving, "Serving" if serving else "Deploying", f"version {stable}{waiting}")


def reconcile(ctx: Context, rec: Reconcile) -> None:
    """Choose the version, move the rollout on, and make the children match."""
    spec = parse_spec(ModelDeploymentSpec, rec)
    _ensure_token_secret(ctx, rec)
    names = builders.serving_names(rec.name)
    versions = of_model(ctx.model_versions(rec.namespace), spec.model_name)
    ready = {int(mv["spec"]["version"]): mv for mv in versions if is_true(mv.get("status"))}
    target = _target(rec, spec, ready, rejected_versions(ready))
    if target is None:
        return
    canary_dep = ctx.kube.read("apps/v1", "Deployment", rec.namespace, names["canary"])
    canary_ready = deployment_ready(canary_dep)
    state = _roll(ctx, rec, spec, target, canary_ready, ready)
    stable_mv = _version(versions, ready, state["stableVersion"])
    if stable_mv is None:
        missing = f"version {state['stableVersion']} is gone"
        rec.ready(False, "VersionMissing", missing)
        rec.condition("Degraded", True, "VersionMissing", missing)
        rec.status["phase"] = "Degraded"
        return
    if builders.routed_by_gateway(spec) and not ctx.kube.serves(*builders.HTTP_ROUTE):
        message = "canary.router is gateway, but the API server serves no HTTPRoute kind: "
        rec.ready(False, "GatewayAPIMissing", message + "install the Gateway API CRDs")
        return
    weight = canary_weight(spec, state, canary_ready or still_serving(canary_dep, state))
    canary = state["canaryVersion"]
    canary_mv = ready[canary] if canary is not None else None
    shadow_mv = ready.get(spec.shadow.version) if spec.shadow is not None else None
    children = builders.serving_children(
        rec.body, spec, stable_mv, canary_mv, weight, ctx.settings, shadow_mv
    )
    _apply(ctx, [*children, *_route_gone(rec, spec)])
    served = {stable_mv["metadata"]["name"]: "stable"}
    if canary_mv is not None:
        served[canary_mv["metadata"]["name"]] = "canary"
    if shadow_mv is not None:  # a version also stable or canary keeps that role's label
        served.setdefault(shadow_mv["metadata"]["name"], "shadow")
    _label_served(ctx, rec, versions, served)
    retention.enforce(ctx, rec, spec, versions, served)
    rec.status["shadowVersion"] = int(shadow_mv["spec"]["version"]) if shadow_mv else None
    rec.status.update(canaryWeight=weight, url=builders.service_url(rec.body, ctx.settings))
    stable_dep = ctx.kube.read("apps/v1", "Deployment", rec.namespace, names["stable"])
    _degraded(rec, state)
    _report(rec, state, target, weight, deployment_ready(stable_dep))


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="spec")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="metadata.annotations")
@kopf.timer(GROUP, VERSION, "modeldeployments", interval=IMPORT_SETTINGS.resync_seconds)
@kopf.timer(
    GROUP,
    VERSION,
    "modeldeployments",
    id="canary_tick",
    interval=IMPORT_SETTINGS.tick_seconds,
    when=lambda status, **_: status.get("canaryVersion") is not None,
)
def reconcile_modeldeployment(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)


@kopf.on.delete(GROUP, VERSION, "modeldeployments")
def release_served_versions(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Take the deployment's ``served-by`` label off its versions, so they may be deleted
    once the deployment is gone (its children go with their owner reference)."""
    ctx, md = context(memo), plain(body)
    namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
    key = builders.served_by_label(name)
    model = (md.get("spec") or {}).get("modelName")
    versions = versions_of(ctx.kube, namespace, model) if model else []
    labelled = [
        v["metadata"]["name"] for v in versions if key in (v["metadata"].get("labels") or {})
    ]
    named = (md.get("status") or {}).get("servedModelVersions") or []
    relabel(ctx, namespace, name, versions, sorted({*labelled, *named}), {})
