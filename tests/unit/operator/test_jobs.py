"""Reading a Job's state and the result its pod reported, without a cluster."""

from __future__ import annotations

from typing import Any

from kubeloop.contracts.results import JobResult
from kubeloop.operator.builders import TRAINER_CONTAINER
from kubeloop.operator.handlers.jobs import blocked, job_state, outcome


class Pods:
    """The one read :func:`outcome` makes: the Job's pods."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = list(pods)

    def list(self, api_version: str, kind: str, namespace: str, selector: dict[str, str]):
        assert (api_version, kind, namespace, selector) == ("v1", "Pod", "ml", {"job-name": "j"})
        return self.pods


def job(condition: str | None, **fields: str) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", **fields}] if condition else []
    return {"metadata": {"name": "j", "namespace": "ml"}, "status": {"conditions": conditions}}


def pod(message: str, finished: str, container: str = TRAINER_CONTAINER) -> dict[str, Any]:
    terminated = {"message": message, "finishedAt": finished}
    return {
        "status": {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]}
    }


def test_job_state_from_its_conditions():
    assert job_state(job(None)) == "Running"
    assert job_state(job("Complete")) == "Succeeded"
    assert job_state(job("Failed")) == "Failed"


def test_the_latest_pods_result_is_read():
    first = JobResult(kind="train", status="failed", reason="first try").to_message()
    last = JobResult(kind="train", status="rejected", reason="gate").to_message()
    done = outcome(
        Pods(pod(last, "2024-05-01T10:01:00Z"), pod(first, "2024-05-01T10:00:00Z")), job("Failed")
    )
    assert done.state == "Failed"
    assert done.result is not None
    assert done.result.status == "rejected"
    assert done.reason == "gate"


def test_without_a_result_the_jobs_failure_is_the_reason():
    failed = job("Failed", reason="BackoffLimitExceeded", message="Job has reached the limit")
    crashed = outcome(Pods(pod("MemoryError", "2024-05-01T10:00:00Z")), failed)
    assert crashed.result is None
    assert crashed.reason == "BackoffLimitExceeded: Job has reached the limit"
    other = outcome(Pods(pod("{}", "2024-05-01T10:00:00Z", container="sidecar")), failed)
    assert other.result is None


def waiting(reason: str, message: str, container: str = TRAINER_CONTAINER) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message}}
    return {"status": {"containerStatuses": [{"name": container, "state": state}]}}


def test_a_pod_the_kubelet_cannot_start_says_why():
    missing = waiting("CreateContainerConfigError", 'secret "db" not found')
    assert blocked(Pods(missing), job(None)) == (
        'CreateContainerConfigError: secret "db" not found'
    )
    # still starting, or another container: nothing to say
    assert blocked(Pods(waiting("ContainerCreating", "")), job(None)) is None
    assert blocked(Pods(waiting("ErrImagePull", "x", container="sidecar")), job(None)) is None
    assert blocked(Pods(), job(None)) is None
