"""Playing the kubelet for pods that kwok keeps Running.

kwok runs no containers: it marks a pod Running and Ready (``pod-ready``) and
leaves it there unless the pod is labelled ``kwok.x-k8s.io/complete: "true"``.
A test decides how a pod ends instead, the way a kubelet reports it: through
the ``pods/status`` subresource, with ``phase`` Succeeded or Failed and each
container ``terminated`` with an exit code and a termination message. The real
Job controller then completes or fails the Job.

    pod = job_pod(core, namespace, "train-abc")
    finish_pod(core, pod, exit_code=0, message=json.dumps(summary))

or, in one step, ``finish_job(core, namespace, "train-abc", exit_code=0, message=...)``.
The exit code is that of a container whose pod has ``restartPolicy: Never``
(non-zero fails the pod, as it would with a real kubelet).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubetest import wait_for

MERGE_PATCH = "application/merge-patch+json"


def _name_namespace(pod: Any) -> tuple[str, str]:
    """(name, namespace) of a V1Pod or of a pod dict (``to_dict()`` of either client)."""
    if isinstance(pod, Mapping):
        meta = pod["metadata"]
        return meta["name"], meta["namespace"]
    return pod.metadata.name, pod.metadata.namespace


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return _stamp(dt.datetime.now(dt.UTC))


def _describe(core: client.CoreV1Api, name: str, namespace: str) -> dict[str, Any]:
    pod = core.read_namespaced_pod(name, namespace)
    return {
        "phase": pod.status.phase,
        "nodeName": pod.spec.node_name,
        "conditions": [
            (c.type, c.status, c.reason, c.message) for c in (pod.status.conditions or [])
        ],
    }


def job_pod(
    core: client.CoreV1Api, namespace: str, job_name: str, *, timeout: float = 60.0
) -> client.V1Pod:
    """The (first, oldest) pod the Job controller created for ``job_name``."""

    def find() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        return min(pods, key=lambda p: p.metadata.creation_timestamp) if pods else None

    return wait_for(find, f"a pod of Job {namespace}/{job_name}", timeout=timeout)


def wait_running(
    core: client.CoreV1Api, name: str, namespace: str, *, timeout: float = 60.0
) -> client.V1Pod:
    """Wait until kwok has scheduled-and-started the pod (phase Running)."""

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" else None

    return wait_for(
        running,
        f"pod {namespace}/{name} to be Running on a kwok node",
        timeout=timeout,
        state=lambda: _describe(core, name, namespace),
    )


def terminated_statuses(
    pod: client.V1Pod, exit_code: int, message: str, reason: str | None, now: str
) -> list[dict[str, Any]]:
    """Each container of ``pod`` terminated with ``exit_code``, as a kubelet reports it."""
    started = {
        s.name: _stamp(s.state.running.started_at)
        for s in (pod.status.container_statuses or [])
        if s.state and s.state.running and s.state.running.started_at
    }
    return [
        {
            "name": c.name,
            "image": c.image,
            "imageID": "",
            "containerID": f"kwok://{pod.metadata.uid}-{c.name}",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                    "message": message,
                    "startedAt": started.get(c.name, now),
                    "finishedAt": now,
                }
            },
        }
        for c in pod.spec.containers
    ]


def finished_conditions(pod: client.V1Pod, now: str) -> list[dict[str, Any]]:
    """The pod's conditions once its containers ended: no longer Ready."""
    conditions = []
    for cond in pod.status.conditions or []:
        entry = {"type": cond.type, "status": cond.status}
        if cond.type in ("Ready", "ContainersReady"):
            entry.update(status="False", reason="PodCompleted", lastTransitionTime=now)
        elif cond.last_transition_time:
            entry["lastTransitionTime"] = _stamp(cond.last_transition_time)
        conditions.append(entry)
    return conditions


def finish_pod(
    core: client.CoreV1Api,
    pod: Any,
    *,
    exit_code: int = 0,
    message: str = "",
    reason: str | None = None,
    wait: bool = True,
    timeout: float = 60.0,
) -> client.V1Pod:
    """End ``pod`` as a kubelet would: every container terminated with ``exit_code``.

    ``pod`` is a ``V1Pod`` or a pod dict (only its name and namespace are
    used). ``message`` becomes each container's ``state.terminated.message``
    (the termination message, e.g. a JSON summary). ``reason`` defaults to
    Completed (exit 0) or Error. The pod's phase becomes Succeeded (exit 0) or
    Failed. With ``wait`` (the default) it first waits for kwok to have made
    the pod Running, so kwok's own status write cannot land after this one.
    Returns the pod as the API server stored it.
    """
    name, namespace = _name_namespace(pod)
    current = (
        wait_running(core, name, namespace, timeout=timeout)
        if wait
        else core.read_namespaced_pod(name, namespace)
    )
    now = _now()
    body = {
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": finished_conditions(current, now),
            "containerStatuses": terminated_statuses(current, exit_code, message, reason, now),
        }
    }
    patched: client.V1Pod = core.patch_namespaced_pod_status(
        name, namespace, body, _content_type=MERGE_PATCH
    )
    return patched


def finish_job(
    core: client.CoreV1Api,
    namespace: str,
    job_name: str,
    *,
    exit_code: int = 0,
    message: str = "",
    timeout: float = 60.0,
) -> client.V1Pod:
    """Find the Job's pod and :func:`finish_pod` it."""
    pod = job_pod(core, namespace, job_name, timeout=timeout)
    return finish_pod(core, pod, exit_code=exit_code, message=message, timeout=timeout)
