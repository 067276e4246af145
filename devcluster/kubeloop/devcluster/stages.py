"""kwok's configuration: which fake nodes it manages and how it moves their pods.

kwok changes objects only as its Stages say. These are kwok v0.8's "fast"
stages (kustomize/stage/{node/fast,node/heartbeat-with-lease,pod/fast}, Apache
2.0), with two changes for Kubeloop's tests, which play the kubelet themselves:

- ``pod-ready`` selects only pods whose phase is ``Pending`` (the API server
  sets it on create, so "unset" never reaches kwok): once a test has patched a
  pod to ``Succeeded`` or ``Failed``, kwok never writes ``Running`` over it;
- ``pod-complete`` selects only running pods labelled
  ``kwok.x-k8s.io/complete: "true"``. Every other pod stays ``Running`` until
  a test finishes it (``tests/cluster/kubelet.py``) or it is deleted.

``node-initialize`` makes a node Ready; ``node-heartbeat-with-lease`` keeps
its conditions fresh (kwok renews the node Lease every few seconds besides);
``pod-delete`` removes a deleted pod at once, as a kubelet would after its
containers stopped.
"""

from __future__ import annotations

from pathlib import Path

#: label/annotation that marks the nodes kwok manages
NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_ANNOTATION_VALUE = "fake"
#: label a pod carries when kwok should run it to completion (exit code 0)
COMPLETE_LABEL = "kwok.x-k8s.io/complete"


def kwok_config() -> str:
    """kwok's ``--config`` file (``kwok.yaml`` here): the Stages."""
    return Path(__file__).with_name("kwok.yaml").read_text()
