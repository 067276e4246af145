"""Which model a TrainingJob's challenger must beat: :func:`resolve` decides, purely.

``gate.compareTo.policy`` says where the champion comes from:

- ``Serving``: the stable version of the ModelDeployment named by the TrainingJob's
  ``kubeloop.io/model-deployment`` label (retrains carry it). No label is an invalid
  spec; a deployment with no stable version yet (the first model) has no champion,
  and the challenger passes.
- ``Version``: that ModelVersion of the TrainingJob's own model.
- ``None`` (or no ``compareTo``): no comparison.

The handler reads the objects, calls :func:`resolve` and applies its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kubeloop.api.v1alpha1 import TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.operator.builders import DEPLOYMENT_LABEL

Outcome = Literal["none", "no-champion", "champion", "invalid", "waiting"]


@dataclass(frozen=True)
class Champion:
    """The champion's model directory, version and digest, as the trainer Job takes them."""

    uri: str
    version: int
    sha256: str

    def args(self) -> list[str]:
        """The ``kubeloop train`` arguments naming it."""
        return [
            *("--champion", self.uri),
            *("--champion-version", str(self.version)),
            *("--champion-sha256", self.sha256),
        ]


@dataclass(frozen=True)
class Resolution:
    """What :func:`resolve` found: a champion, none (and why), or a reason to stop or wait."""

    outcome: Outcome
    message: str = ""
    champion: Champion | None = None


def deployment_name(tj: dict[str, Any]) -> str | None:
    """The ModelDeployment a TrainingJob was made for, from its label."""
    labels = (tj.get("metadata") or {}).get("labels") or {}
    name = labels.get(DEPLOYMENT_LABEL)
    return str(name) if name else None


def _of(versions: Sequence[dict[str, Any]], model: str, number: int) -> dict[str, Any] | None:
    for mv in versions:
        spec = mv.get("spec") or {}
        if spec.get("modelName") == model and spec.get("version") == number:
            return mv
    return None


def _champion(mv: dict[str, Any]) -> Champion:
    artifact = mv["spec"]["artifact"]
    return Champion(
        uri=ArtifactLayout.model_dir(str(artifact["uri"])),
        version=int(mv["spec"]["version"]),
        sha256=str(artifact["sha256"]),
    )


def _serving(
    tj: dict[str, Any], md: dict[str, Any] | None, versions: Sequence[dict[str, Any]]
) -> Resolution:
    name = deployment_name(tj)
    if name is None:
        return Resolution(
            "invalid",
            f"spec.gate.compareTo.policy: Serving needs the {DEPLOYMENT_LABEL} label naming "
            "a ModelDeployment (retrains carry it); use policy Version or None otherwise",
        )
    if md is None:
        return Resolution("waiting", f"ModelDeployment {name} (the champion's) not found")
    stable = (md.get("status") or {}).get("stableVersion")
    if stable is None:
        return Resolution("no-champion", f"no champion: ModelDeployment {name} serves no version")
    model = str(md["spec"]["modelName"])
    mv = _of(versions, model, int(stable))
    if mv is None:
        return Resolution("waiting", f"ModelVersion {model} v{stable} (the champion) not found")
    return Resolution("champion", f"champion: {model} v{stable}", _champion(mv))


def resolve(
    tj: dict[str, Any],
    spec: TrainingJobSpec,
    md: dict[str, Any] | None,
    versions: Sequence[dict[str, Any]],
) -> Resolution:
    """The champion of ``tj``, given the ModelDeployment its label names (or None) and the
    ModelVersions of the namespace."""
    compare = spec.gate.compare_to if spec.gate else None
    if compare is None or compare.policy == "None":
        return Resolution("none")
    if compare.policy == "Serving":
        return _serving(tj, md, versions)
    assert compare.version is not None  # the CRD's rule
    mv = _of(versions, spec.model_name, compare.version)
    if mv is None:
        return Resolution(
            "waiting", f"ModelVersion {spec.model_name} v{compare.version} (the champion) not found"
        )
    return Resolution("champion", f"champion: {spec.model_name} v{compare.version}", _champion(mv))
