"""What the tests of a ModelDeployment's rendered children share: a deployment from the
example, a version, the children by (kind, name) and the routing file they carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.routing import RoutingConfig
from kubeloop.operator import builders

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def md_with(shadow: dict[str, Any] | None) -> tuple[dict[str, Any], ModelDeploymentSpec]:
    md = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    md["metadata"].update(name="demo", namespace="ml", uid="0123456789abcdef", generation=1)
    md["spec"]["replicas"] = 4
    if shadow is not None:
        md["spec"]["shadow"] = shadow
    return md, ModelDeploymentSpec.model_validate(md["spec"])


def version(n: int) -> dict[str, Any]:
    uri = f"file:///data/kubeloop/models/ml/x{n}/{ArtifactLayout.MODEL}"
    return {"spec": {"version": n, "artifact": {"uri": uri, "sha256": f"{n:x}" * 64}}}


def by_name(children: list) -> dict[str, Any]:
    return {
        (c.kind if isinstance(c, builders.Absent) else c["kind"], getattr(c, "name", None)
         or c["metadata"]["name"]): c
        for c in children
    }  # fmt: skip


def routing(children: list) -> RoutingConfig:
    (cm,) = [c for c in children if isinstance(c, dict) and c["kind"] == "ConfigMap"]
    return RoutingConfig.model_validate(json.loads(cm["data"]["routing.json"]))
