"""The Job-result contract: what a snapshot or trainer Job reports to the operator.

``kubeloop snapshot``, ``train``, ``predict`` and ``inspect`` write one
:class:`JobResult` as JSON to the container's termination-message file (the pod's
``terminationMessagePath``, policy ``File``); the operator reads it from the pod's
status and parses the whole message — never a log line. A Job that dies before writing
one has no result, and the operator reports the Job's own failure instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from kubeloop.api.v1alpha1 import Column, Comparison, TensorSpec
from kubeloop.contracts.artifacts import GateResult

#: Largest termination message Kubernetes keeps.
RESULT_LIMIT = 4096
#: Where a container writes its termination message (the Pod default).
TERMINATION_LOG = "/dev/termination-log"
#: Overrides :data:`TERMINATION_LOG`, for runs outside a pod (tests, laptops).
TERMINATION_LOG_ENV = "KUBELOOP_TERMINATION_LOG"
#: The source URL of `kubeloop snapshot` when not given with --source: the snapshot Job of a
#: SQL Dataset sets it from the Secret (spec.source.sql.urlSecretRef), so the URL and its
#: password stay out of the Job's arguments.
SOURCE_URL_ENV = "KUBELOOP_SOURCE_URL"
#: Exit codes of `kubeloop snapshot`, `train` and `predict` besides 0: the run failed,
#: the input is bad (a retry cannot help), the quality gate rejected the model.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REJECTED = 3


class JobResult(BaseModel):
    """The result of ``kubeloop snapshot``, ``train`` or ``predict``, kept under 4 KiB."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    kind: Literal["snapshot", "train", "predict", "inspect", "search"]
    status: Literal["succeeded", "rejected", "failed"]
    reason: str | None = None
    # snapshot
    digest: str | None = None
    rows: int | None = None
    columns: list[Column] | None = None
    snapshot_uri: str | None = None
    profile_uri: str | None = None
    # train
    artifact_uri: str | None = None
    sha256: str | None = None
    metadata_uri: str | None = None
    metrics: dict[str, float] | None = None
    gate: GateResult | None = None
    comparison: Comparison | None = None
    # search (one shard of a search across pods): the trials it wrote
    trials: int | None = None
    # predict (also rows, and sha256: the output file's)
    output_uri: str | None = None
    duration_seconds: float | None = None
    # inspect (also sha256): the ONNX graph's inputs and outputs
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None

    def to_message(self) -> str:
        """Compact JSON, trimmed to fit a termination message."""
        line = self.model_dump_json(exclude_none=True)
        if len(line.encode()) > RESULT_LIMIT and self.columns:
            line = self.model_copy(update={"columns": None}).model_dump_json(exclude_none=True)
        over = len(line.encode()) - RESULT_LIMIT
        if over > 0 and self.reason:
            keep = max(0, len(self.reason.encode()) - over - 16)
            reason = self.reason.encode()[:keep].decode(errors="ignore") + " ..."
            line = self.model_copy(update={"columns": None, "reason": reason}).model_dump_json(
                exclude_none=True
            )
        return line

    @classmethod
    def from_message(cls, message: str | None) -> JobResult | None:
        """The result in a termination message, or None when there is none (a crash)."""
        try:
            return cls.model_validate_json((message or "").strip())
        except ValueError:
            return None


def termination_log() -> str | None:
    """Where the kubelet reads the termination message, if writable here."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        return path
    if os.path.exists(TERMINATION_LOG) and os.access(TERMINATION_LOG, os.W_OK):
        return TERMINATION_LOG
    return None


def report(result: JobResult) -> None:
    """Print the result for a person and write it as the termination message."""
    message = result.to_message()
    print(message, flush=True)
    path = termination_log()
    if path:
        try:
            Path(path).write_text(message)
        except OSError as exc:
            print(f"cannot write the termination message to {path}: {exc}", file=sys.stderr)
