"""A Dataset fed by a ModelDeployment's feedback: which prediction log it reads.

The snapshot Job reads the deployment's prediction-log files, so the deployment must
write them to a claim (``spec.predictionLog.sink: pvc``) with the inputs
(``includeInputs: true``): a log on standard output cannot be mounted, and a prediction
without its inputs is no training row. What is wrong is said naming the field; the two
objects are checked here, as CEL cannot see one object from another.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubeloop.api.v1alpha1 import ModelDeploymentSpec, PredictionLogPVC

#: Ready=False reasons of a Dataset whose feedback source cannot be read (yet)
NOT_FOUND = "DeploymentNotFound"
UNUSABLE = "FeedbackLogUnusable"


def log_claim(name: str, deployment: dict[str, Any] | None) -> PredictionLogPVC | tuple[str, str]:
    """The claim the deployment ``name`` writes its prediction log to; else (reason,
    message) saying what is missing, naming the deployment's field."""
    if deployment is None:
        return NOT_FOUND, f"ModelDeployment {name} not found (source.feedback.deploymentRef)"
    try:
        spec = ModelDeploymentSpec.model_validate(deployment.get("spec") or {})
    except ValidationError:
        return UNUSABLE, f"ModelDeployment {name} has an invalid spec"
    plog = spec.prediction_log
    what = f"ModelDeployment {name}: a feedback source needs"
    if plog is None:
        return UNUSABLE, f"{what} spec.predictionLog (sink pvc, includeInputs true); it has none"
    if plog.pvc is None:
        return UNUSABLE, f"{what} spec.predictionLog.sink pvc (it is {plog.sink})"
    if not plog.include_inputs:
        return UNUSABLE, f"{what} spec.predictionLog.includeInputs true (it is false)"
    return plog.pvc
