"""The generated CRDs are structural apiextensions/v1 schemas and carry every rule."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from kubeloop.api import crdgen
from kubeloop.api.v1alpha1 import KINDS

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "crds"


def load(plural: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRD_DIR / f"{plural}.kubeloop.io.yaml").read_text())
    return doc


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return node


def walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from walk(node[key], f"{path}[{key}]")


def rules(crd: dict[str, Any]) -> dict[str, list[str]]:
    return {
        path: [r["rule"] for r in node["x-kubernetes-validations"]]
        for path, node in walk(schema_of(crd))
        if "x-kubernetes-validations" in node
    }


@pytest.mark.parametrize("resource", KINDS, ids=lambda r: r.info.kind)
def test_crd_is_structural(resource):
    crd = load(resource.info.plural)
    for path, node in walk(schema_of(crd)):
        typed = "type" in node
        special = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert typed or special, f"{path}: every node needs a type"
        assert "$ref" not in node, f"{path}: $ref is not allowed"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: only int-or-string may anyOf"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, False), bool), f"{path}: {key} must be a boolean"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            # Free-form data only where a map of arbitrary values is meant.
            assert path.endswith(("params", "[items]")), f"{path}: unexpected free-form field"


@pytest.mark.parametrize("resource", KINDS, ids=lambda r: r.info.kind)
def test_crd_deserializes_as_apiextensions_v1(resource):
    crd = load(resource.info.plural)
    model = ApiClient()._ApiClient__deserialize(crd, "V1CustomResourceDefinition")
    version = model.spec.versions[0]
    assert model.spec.group == "kubeloop.io"
    assert model.spec.names.categories == ["kubeloop"]
    assert model.spec.names.short_names
    assert version.subresources.status == {}
    columns = {c.name: c.json_path for c in version.additional_printer_columns}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert "Age" in columns
    status = schema_of(crd)["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason"}


def test_descriptions_come_from_the_models():
    spec = schema_of(load("trainingjobs"))["properties"]["spec"]
    assert spec["properties"]["split"]["properties"]["testFraction"]["description"]
    undocumented = [
        name for name, node in spec["properties"].items() if not node.get("description")
    ]
    assert undocumented == []


EXPECTED_RULES = {
    "datasets": {
        ".spec.source": [
            "(has(self.path) ? 1 : 0) + (has(self.uri) ? 1 : 0) + (has(self.sql) ? 1 : 0) == 1",
            "!has(self.secretRef) || has(self.uri)",
        ]
    },
    "trainingjobs": {
        ".spec.split": ["self.testFraction > 0.0 && self.testFraction < 1.0"],
        ".spec.sampling": ["self.maxRows >= 1"],
    },
    "modelversions": {".spec": ["self == oldSelf"]},
    "modeldeployments": {
        ".spec.version": [
            "self.policy == 'Pinned' ? has(self.pinned) : !has(self.pinned)",
            "!has(self.pinned) || self.pinned >= 1",
        ],
        ".spec.canary": [
            "self.steps.all(s, s.weight >= 1 && s.weight <= 100)",
            "self.steps.map(s, s.weight).isSorted()",
            "(has(self.router) && self.router == 'gateway') == has(self.gateway)",
        ],
        ".spec.autoscaling": ["self.maxReplicas >= self.minReplicas"],
    },
}


@pytest.mark.parametrize("plural", sorted(EXPECTED_RULES))
def test_cel_rules_present(plural):
    found = rules(load(plural))
    for path, expected in EXPECTED_RULES[plural].items():
        assert found.get(path) == expected, f"{plural}{path}: {found.get(path)}"


@pytest.mark.parametrize("plural", ["trainingjobs", "modeldeployments"])
def test_estimator_allow_list_rule_present(plural):
    found = rules(load(plural))
    spec_path = ".spec" if plural == "trainingjobs" else ".spec.retrain.template"
    rule, compare_metric = found[spec_path]
    assert "self.estimator.className in ['LogisticRegression'" in rule
    assert "'RandomForestRegressor'" in rule
    assert "self.gate.compareTo.metric in ['accuracy'" in compare_metric


@pytest.mark.parametrize("plural", ["trainingjobs", "modeldeployments"])
def test_compare_to_rules_present(plural):
    gate = ".spec.gate" if plural == "trainingjobs" else ".spec.retrain.template.gate"
    found = rules(load(plural))[f"{gate}.compareTo"]
    assert found[0] == "(self.policy == 'Version') == has(self.version)"
    assert found[1] == "!has(self.tolerance) || self.tolerance >= 0.0"
    assert found[2].startswith("!has(self.metric) || self.metric in ['accuracy'")


def test_verify_detects_stale_and_passes_after_regeneration(tmp_path):
    work = tmp_path / "crds"
    shutil.copytree(CRD_DIR, work)
    assert crdgen.main(["--check", str(work)]) == 0
    edited = work / "datasets.kubeloop.io.yaml"
    edited.write_text(edited.read_text().replace("shortNames:", "shortNames:\n    - hand"))
    assert crdgen.main(["--check", str(work)]) == 1
    assert crdgen.main([str(work)]) == 0
    assert crdgen.main(["--check", str(work)]) == 0
