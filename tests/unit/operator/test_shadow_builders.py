"""spec.shadow rendered as <name>-shadow children and a shadow upstream in the routing file."""

from __future__ import annotations

from children_helpers import by_name, md_with, routing, version

from kubeloop.operator import builders
from kubeloop.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(volume_claim="kubeloop-data", artifact_root="file:///data/kubeloop")


def test_shadow_gets_its_deployment_service_and_a_mirrored_share():
    md, spec = md_with({"version": 3, "percent": 25})
    children = builders.serving_children(md, spec, version(1), None, 0, SETTINGS, version(3))
    found = by_name(children)
    dep, svc = found["Deployment", "demo-shadow"], found["Service", "demo-shadow"]
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "3"
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert dep["spec"]["replicas"] == 1  # 25% of 4
    selector = {"kubeloop.io/model-deployment": "demo", "kubeloop.io/role": "shadow"}
    assert dep["spec"]["selector"]["matchLabels"] == selector
    assert svc["spec"]["selector"] == selector
    pod_volumes = {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "routing" not in pod_volumes  # a shadow never forwards on
    config = routing(children)
    assert config.shadow_url == "http://demo-shadow.ml.svc:8080"
    assert config.shadow_weight == 25
    assert config.shadow_version == 3
    assert not config.active  # no canary: nothing forwarded


def test_shadow_and_canary_at_once():
    md, spec = md_with({"version": 3})
    children = builders.serving_children(md, spec, version(1), version(2), 10, SETTINGS, version(3))
    found = by_name(children)
    assert ("Deployment", "demo-canary") in found
    assert found["Deployment", "demo-shadow"]["spec"]["replicas"] == 4  # 100% of 4
    config = routing(children)
    assert (config.weight, config.canary_version) == (10, 2)
    assert (config.shadow_weight, config.shadow_version) == (100, 3)


def test_without_the_field_or_a_ready_version_the_shadow_goes():
    for shadow, shadow_mv in [(None, None), ({"version": 9}, None)]:
        md, spec = md_with(shadow)
        children = builders.serving_children(md, spec, version(1), None, 0, SETTINGS, shadow_mv)
        absent = [c for c in children if isinstance(c, builders.Absent)]
        assert ("Deployment", "demo-shadow") in [(a.kind, a.name) for a in absent]
        assert ("Service", "demo-shadow") in [(a.kind, a.name) for a in absent]
        assert routing(children).shadow_url is None
        cm = next(c for c in children if isinstance(c, dict) and c["kind"] == "ConfigMap")
        assert "shadow_url" not in cm["data"]["routing.json"]  # the file reads as before
