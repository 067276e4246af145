"""Reading a snapshot or trainer Job: its state and, once it has finished, its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kubeloop.contracts.results import JobResult
from kubeloop.operator.builders import TRAINER_CONTAINER
from kubeloop.operator.kube import Kube

JobState = Literal["Running", "Succeeded", "Failed"]


def job_state(job: dict[str, Any]) -> JobState:
    """``Running``, ``Succeeded`` or ``Failed`` from a Job's conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "Succeeded"
        if condition.get("type") == "Failed":
            return "Failed"
    return "Running"


def job_failure(job: dict[str, Any]) -> str:
    """The reason and message of a failed Job's Failed condition."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".strip()
    return "Failed"


def termination_message(kube: Kube, job: dict[str, Any], container: str) -> str | None:
    """The termination message of the Job's most recent terminated pod, if any."""
    meta = job["metadata"]
    pods = kube.list("v1", "Pod", meta["namespace"], {"job-name": meta["name"]})
    best: tuple[str, str] | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") != container or not terminated:
                continue
            finished = str(terminated.get("finishedAt") or "")
            if best is None or finished >= best[0]:
                best = (finished, str(terminated.get("message") or ""))
    return best[1] if best else None


#: Why a kubelet cannot start a container, as its waiting state says: a Secret or
#: ConfigMap (key) the pod's environment names is missing, or the image cannot be pulled.
BLOCKED_REASONS = frozenset(
    {"CreateContainerConfigError", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"}
)


def blocked(kube: Kube, job: dict[str, Any], container: str = TRAINER_CONTAINER) -> str | None:
    """Why the running Job's pod cannot start its container, if the kubelet says so (e.g.
    ``CreateContainerConfigError: secret "db" not found``); None while it can."""
    meta = job["metadata"]
    for pod in kube.list("v1", "Pod", meta["namespace"], {"job-name": meta["name"]}):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if cs.get("name") == container and waiting.get("reason") in BLOCKED_REASONS:
                return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return None


@dataclass(frozen=True)
class Finished:
    """A Job that has finished: how, the result its container reported (None: a crash),
    and the image that container ran."""

    state: JobState
    result: JobResult | None
    failure: str
    image: str | None = None

    @property
    def reason(self) -> str:
        """Why it failed: the result's own reason, else the Job's Failed condition."""
        return (self.result.reason if self.result else None) or self.failure


def outcome(kube: Kube, job: dict[str, Any]) -> Finished:
    """How a finished Job ended and what its container reported (reads its pods)."""
    message = termination_message(kube, job, TRAINER_CONTAINER)
    result = JobResult.from_message(message)
    return Finished(job_state(job), result, job_failure(job), job_image(job, TRAINER_CONTAINER))


def job_image(job: dict[str, Any], container: str) -> str | None:
    """The image the Job's pod template gives ``container``."""
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    return next((c.get("image") for c in containers if c.get("name") == container), None)
