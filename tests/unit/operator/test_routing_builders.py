"""The stable pods follow their routing ConfigMap through the API: their own
ServiceAccount, a Role that reads that one ConfigMap, and the sticky header."""

from __future__ import annotations

from typing import Any

from children_helpers import by_name, md_with, routing, version

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.operator import builders
from kubeloop.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    volume_claim="kubeloop-data",
    artifact_root="file:///data/kubeloop",
    service_account="kubeloop-workload",
)


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def env(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod(dep)["containers"][0]["env"]}


def test_stable_pods_get_an_identity_that_reads_their_routing_configmap_only():
    md, spec = md_with(None)
    found = by_name(builders.serving_children(md, spec, version(1), version(2), 20, SETTINGS))
    account = found["ServiceAccount", "demo-router"]
    role = found["Role", "demo-router"]
    binding = found["RoleBinding", "demo-router"]
    for obj in (account, role, binding):
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        assert obj["metadata"]["namespace"] == "ml"
    assert account["automountServiceAccountToken"] is False  # only where a pod asks
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["demo-routing"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "demo-router",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-router", "namespace": "ml"}
    ]
    stable = pod(found["Deployment", "demo-stable"])
    assert stable["serviceAccountName"] == "demo-router"
    assert stable["automountServiceAccountToken"] is True
    assert env(found["Deployment", "demo-stable"])["KUBELOOP_SERVING_ROUTING_CONFIGMAP"] == (
        "demo-routing"
    )
    # the mounted file stays: the start-up value, and the fallback without the API
    assert "KUBELOOP_SERVING_ROUTING_FILE" in env(found["Deployment", "demo-stable"])
    canary = pod(found["Deployment", "demo-canary"])
    assert canary["serviceAccountName"] == "kubeloop-workload"  # no token: forwards nothing
    assert "automountServiceAccountToken" not in canary
    assert "KUBELOOP_SERVING_ROUTING_CONFIGMAP" not in env(found["Deployment", "demo-canary"])


def test_the_account_carries_the_configured_annotations():
    md, spec = md_with(None)
    settings = SETTINGS.model_copy(
        update={
            "router_account_annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}
        }
    )
    found = by_name(builders.serving_children(md, spec, version(1), None, 0, settings))
    annotations = found["ServiceAccount", "demo-router"]["metadata"]["annotations"]
    assert annotations == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}


def test_following_through_the_api_can_be_turned_off():
    md, spec = md_with(None)
    settings = SETTINGS.model_copy(update={"follow_routing": False})
    found = by_name(builders.serving_children(md, spec, version(1), None, 0, settings))
    assert not {k for k in found if k[0] in ("ServiceAccount", "Role", "RoleBinding")}
    stable = found["Deployment", "demo-stable"]
    assert pod(stable)["serviceAccountName"] == "kubeloop-workload"
    assert "KUBELOOP_SERVING_ROUTING_CONFIGMAP" not in env(stable)


def test_sticky_by_reaches_the_routing_file():
    md, _ = md_with(None)
    md["spec"]["canary"]["stickyBy"] = {"header": "x-user-id"}
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    children = builders.serving_children(md, spec, version(1), version(2), 20, SETTINGS)
    config = routing(children)
    assert (config.sticky_header, config.weight) == ("x-user-id", 20)
    md2, spec2 = md_with(None)
    assert (
        routing(builders.serving_children(md2, spec2, version(1), None, 0, SETTINGS)).sticky_header
        is None
    )
