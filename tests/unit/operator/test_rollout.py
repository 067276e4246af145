"""The canary state machine, step by step, without a cluster (at a fixed time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.operator.handlers.modeldeployment import (
    ABORT,
    PROMOTE,
    advance,
    canary_weight,
    choose_version,
    deployment_ready,
    still_serving,
)
from kubeloop.operator.timestamps import rfc3339

CANARY = ModelDeploymentSpec.model_validate(
    {
        "modelName": "m",
        "canary": {"steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}]},
    }
)
PLAIN = ModelDeploymentSpec.model_validate({"modelName": "m"})


NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ago(seconds: float) -> str:
    return rfc3339(NOW - timedelta(seconds=seconds))


def test_first_version_goes_straight_to_stable():
    state, events, _ = advance(CANARY, {}, 1, {}, canary_ready=False, now=NOW)
    assert state["stableVersion"] == 1
    assert state["canaryVersion"] is None
    assert events == []


def test_without_steps_a_new_version_is_a_rolling_update():
    state, events, _ = advance(PLAIN, {"stableVersion": 1}, 2, {}, canary_ready=False, now=NOW)
    assert state["stableVersion"] == 2
    assert events[0][0] == "RollingUpdate"


def test_canary_walks_every_step_then_promotes():
    state, events, _ = advance(CANARY, {"stableVersion": 1}, 2, {}, canary_ready=False, now=NOW)
    assert (state["canaryVersion"], state["canaryStep"], events[0][0]) == (2, 0, "CanaryStarted")
    # The pause has not passed: nothing moves.
    held, events, _ = advance(CANARY, state, 2, {}, canary_ready=True, now=NOW)
    assert held["canaryStep"] == 0
    assert events == []
    # The pause passed but the canary pods are not ready: still nothing.
    waiting, _, _ = advance(
        CANARY, {**state, "stepStartedTime": ago(120)}, 2, {}, canary_ready=False, now=NOW
    )
    assert waiting["canaryStep"] == 0
    step1, events, _ = advance(
        CANARY, {**state, "stepStartedTime": ago(120)}, 2, {}, canary_ready=True, now=NOW
    )
    assert (step1["canaryStep"], events[0][0]) == (1, "CanaryStep")
    done, events, _ = advance(
        CANARY, {**step1, "stepStartedTime": ago(120)}, 2, {}, canary_ready=True, now=NOW
    )
    assert (done["stableVersion"], done["canaryVersion"], events[0][0]) == (2, None, "Promoted")


def test_the_first_pause_starts_when_the_canary_is_ready():
    started, _, _ = advance(CANARY, {"stableVersion": 1}, 2, {}, canary_ready=False, now=NOW)
    assert started["stepStartedTime"] is None
    # pods still starting: the clock does not run, however long that takes
    starting, events, _ = advance(CANARY, started, 2, {}, canary_ready=False, now=NOW)
    assert starting["stepStartedTime"] is None
    assert events == []
    # ready: the step's pause starts now, and the step holds for its whole pause
    running, events, _ = advance(CANARY, starting, 2, {}, canary_ready=True, now=NOW)
    assert running["stepStartedTime"] is not None
    assert (running["canaryStep"], events) == (0, [])


def test_promote_annotation_skips_the_remaining_steps():
    state = {"stableVersion": 1, "canaryVersion": 2, "canaryStep": 0, "stepStartedTime": ago(0)}
    done, events, _ = advance(CANARY, state, 2, {PROMOTE: "true"}, canary_ready=False, now=NOW)
    assert done["stableVersion"] == 2
    assert events[0][0] == "Promoted"


def test_abort_returns_traffic_and_is_not_retried_for_that_version():
    state = {"stableVersion": 1, "canaryVersion": 2, "canaryStep": 1, "stepStartedTime": ago(0)}
    aborted, events, _ = advance(CANARY, state, 2, {ABORT: "true"}, canary_ready=True, now=NOW)
    assert (aborted["stableVersion"], aborted["canaryVersion"], aborted["abortedVersion"]) == (
        1,
        None,
        2,
    )
    assert events[0][0] == "CanaryAborted"
    again, events, _ = advance(CANARY, aborted, 2, {}, canary_ready=True, now=NOW)
    assert again["canaryVersion"] is None
    assert events == []
    newer, events, _ = advance(CANARY, aborted, 3, {}, canary_ready=True, now=NOW)
    assert newer["canaryVersion"] == 3


def test_a_newer_version_restarts_the_canary():
    state = {"stableVersion": 1, "canaryVersion": 2, "canaryStep": 1, "stepStartedTime": ago(0)}
    newer, _, _ = advance(CANARY, state, 3, {}, canary_ready=True, now=NOW)
    assert (newer["canaryVersion"], newer["canaryStep"]) == (3, 0)


def test_the_canary_gets_its_steps_weight_only_once_ready():
    state = {"stableVersion": 1, "canaryVersion": 2, "canaryStep": 1}
    assert canary_weight(CANARY, state, canary_ready=True) == 50
    assert canary_weight(CANARY, state, canary_ready=False) == 0
    no_canary = {**state, "canaryVersion": None, "canaryStep": None}
    assert canary_weight(CANARY, no_canary, canary_ready=True) == 0


def test_choose_version():
    ready = {1: {}, 3: {}}
    assert choose_version(PLAIN, ready) == 3
    pinned = ModelDeploymentSpec.model_validate(
        {"modelName": "m", "version": {"policy": "Pinned", "pinned": 1}}
    )
    assert choose_version(pinned, ready) == 1
    missing = ModelDeploymentSpec.model_validate(
        {"modelName": "m", "version": {"policy": "Pinned", "pinned": 2}}
    )
    assert choose_version(missing, ready) is None
    assert choose_version(PLAIN, {}) is None


def deployment(want: int, generation: int = 2, **status: int) -> dict[str, object]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": want},
        "status": {"observedGeneration": generation, **status},
    }


def test_a_deployment_is_ready_once_every_replica_runs_the_new_template():
    done = deployment(2, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2)
    assert deployment_ready(done)


def test_a_rolling_update_with_old_pods_left_is_not_ready():
    # the new pod is up, the old one still serves: readyReplicas alone would say ready
    halfway = deployment(1, replicas=2, updatedReplicas=1, readyReplicas=2, availableReplicas=2)
    assert not deployment_ready(halfway)
    # the new pod exists but is not available yet
    starting = deployment(1, replicas=1, updatedReplicas=1, readyReplicas=0, availableReplicas=0)
    assert not deployment_ready(starting)


def test_a_deployment_whose_new_spec_is_not_observed_is_not_ready():
    stale = deployment(1, replicas=1, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    stale["metadata"] = {"generation": 3}
    assert not deployment_ready(stale)
    assert not deployment_ready(None)


def test_a_canary_that_was_ready_keeps_its_share_while_it_scales() -> None:
    scaling = {"status": {"availableReplicas": 1, "replicas": 2}}
    assert still_serving(scaling, {"stepStartedTime": "2026-01-01T00:00:00Z"})
    # never ready yet (its first pause has not begun), or no pod available: no share
    assert not still_serving(scaling, {"stepStartedTime": None})
    assert not still_serving({"status": {}}, {"stepStartedTime": "2026-01-01T00:00:00Z"})
    assert not still_serving(None, {"stepStartedTime": "2026-01-01T00:00:00Z"})
