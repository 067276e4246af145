"""The Kubernetes objects the real node adds to its cluster, as pure functions."""

from __future__ import annotations

from typing import Any

from kubeloop.devcluster.node.config import API_PROXY_PORT, DNS_IP, MANAGER, NodeConfig

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC = f"{RBAC_GROUP}/v1"
DNS_LABELS = {"k8s-app": "kube-dns"}
COREDNS = "kubeloop-realnode-coredns"

COREFILE = """\
.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
}
"""


def cluster_role_binding(name: str, role: str, subject: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [subject],
    }


def node_objects(cfg: NodeConfig) -> list[dict[str, Any]]:
    """The node's rights, and the API server's address for pods.

    The Node authorizer is not enabled (RBAC only): the kubelet's rights come from the
    system:node ClusterRole bound to the group system:nodes. Pods reach the API server as
    https://10.96.0.1:443 (the ``kubernetes`` Service); the API server listens on loopback
    only and runs with ``--endpoint-reconciler-type=none``, so the Service's endpoints are
    written here, pointing at the node's relay (an EndpointSlice, which kube-proxy reads).
    """
    binding = {
        "apiVersion": RBAC,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kubeloop-realnode-system-nodes"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:node",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
        ],
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes-realnode",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [cfg.ip], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": API_PROXY_PORT, "protocol": "TCP"}],
    }
    return [binding, endpoints]


def _kube_system(kind: str, name: str, api_version: str = "v1", **rest: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "kube-system"}
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **rest}


def coredns_objects(cfg: NodeConfig) -> list[dict[str, Any]]:
    """CoreDNS as a Deployment behind the kube-dns Service (the kubelet's clusterDNS)."""
    role = {
        "apiVersion": RBAC,
        "kind": "ClusterRole",
        "metadata": {"name": COREDNS},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    binding = {
        "apiVersion": RBAC,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": COREDNS},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": COREDNS,
        },
        "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
    }
    return [
        _kube_system("ServiceAccount", "coredns"),
        role,
        binding,
        _kube_system("ConfigMap", "coredns", data={"Corefile": COREFILE}),
        coredns_deployment(cfg),
        coredns_service(),
    ]


def coredns_deployment(cfg: NodeConfig) -> dict[str, Any]:
    container = {
        "name": "coredns",
        "image": cfg.coredns_image,
        "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
    }
    pod = {
        "serviceAccountName": "coredns",
        # the host's resolver upstream, not itself
        "dnsPolicy": "Default",
        "priorityClassName": "system-cluster-critical",
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
    }
    deployment = _kube_system(
        "Deployment",
        "coredns",
        "apps/v1",
        spec={
            "replicas": 1,
            "selector": {"matchLabels": DNS_LABELS},
            "template": {"metadata": {"labels": DNS_LABELS}, "spec": pod},
        },
    )
    deployment["metadata"]["labels"] = DNS_LABELS
    return deployment


def coredns_service() -> dict[str, Any]:
    service = _kube_system(
        "Service",
        "kube-dns",
        spec={
            "clusterIP": DNS_IP,
            "selector": DNS_LABELS,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    )
    service["metadata"]["labels"] = DNS_LABELS
    return service


def deployment_available(deployment: dict[str, Any]) -> bool:
    """Rolled out as ``kubectl rollout status`` judges it: the newest generation observed,
    every replica updated and available."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and status.get("updatedReplicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
    )
