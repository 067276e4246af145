"""The Argo CD health checks (charts/kubeloop/argocd/*.lua), run by real Lua interpreters.

Argo CD evaluates a health script with a global ``obj`` (the live object) and reads the
table it returns. The harness here does the same: it defines ``obj`` as a Lua table
literal, runs the script's text as the body of a function, and prints the returned table
as JSON. Each script runs under lua5.4 and under lua5.1 (Argo CD's gopher-lua implements
Lua 5.1, so a 5.4-only construct must fail here rather than in a cluster).

The sample objects carry the conditions the operator's handlers write (reasons taken from
operator/kubeloop/operator/handlers/).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "charts" / "kubeloop" / "argocd"
INSTALL_DOC = ROOT / "docs" / "install.md"
INTERPRETERS = ("lua5.4", "lua5.1")
KINDS = ("Dataset", "TrainingJob", "ModelVersion", "ModelDeployment")

PRINTER = r"""
local function quote(s)
  s = tostring(s)
  s = s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
  return '"' .. s .. '"'
end
local keys = {}
for k in pairs(hs) do keys[#keys + 1] = k end
table.sort(keys)
local parts = {}
for _, k in ipairs(keys) do parts[#parts + 1] = quote(k) .. ": " .. quote(hs[k]) end
print("{" .. table.concat(parts, ", ") .. "}")
"""


def lua_string(text: str) -> str:
    """A Lua string literal valid in 5.1 and 5.4: printable ASCII as is, other bytes as \\ddd."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if 32 <= byte < 127 and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_literal(value: Any) -> str:
    """A JSON-like value as a Lua table constructor."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"[{lua_string(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def interpreter(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: run `make chart-tools` (Debian packages lua5.4 lua5.1)"
        )
    return found


def health(kind: str, obj: dict[str, Any], lua: str = "lua5.4") -> dict[str, str]:
    script = (SCRIPTS / f"{kind.lower()}.lua").read_text()
    program = f"obj = {lua_literal(obj)}\nlocal hs = (function()\n{script}\nend)()\n{PRINTER}"
    out = subprocess.run(
        [interpreter(lua), "-"],
        input=program,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, f"{lua} failed on {kind}: {out.stderr}"
    result: dict[str, str] = json.loads(out.stdout)
    return result


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }


def obj(
    kind: str, *conditions: dict[str, Any], generation: int = 1, **status: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if conditions or status:
        body["status"] = {"observedGeneration": 1, "conditions": list(conditions), **status}
    return body


# (kind, object, expected status, expected message)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # Dataset
    ("Dataset", obj("Dataset"), "Progressing", "Waiting for the Kubeloop operator"),
    (
        "Dataset",
        obj("Dataset", cond("Ready", "False", "Snapshotting", "waiting for Job d-snap-g1-0")),
        "Progressing",
        "Snapshotting: waiting for Job d-snap-g1-0",
    ),
    (
        "Dataset",
        obj("Dataset", cond("Ready", "True", "SnapshotSucceeded", "569 rows, sha256:ab")),
        "Healthy",
        "SnapshotSucceeded: 569 rows, sha256:ab",
    ),
    (
        "Dataset",
        obj("Dataset", cond("Ready", "False", "SnapshotFailed", "BadInput: column age missing")),
        "Degraded",
        "SnapshotFailed: BadInput: column age missing",
    ),
    (
        "Dataset",
        obj("Dataset", cond("Ready", "True", "SnapshotFailed", "source unreachable")),
        "Healthy",
        "SnapshotFailed: source unreachable",
    ),
    (
        "Dataset",
        obj("Dataset", cond("Ready", "False", "InvalidSpec", "source: give uri or path")),
        "Degraded",
        "InvalidSpec: source: give uri or path",
    ),
    (
        "Dataset",
        obj("Dataset", cond("Ready", "True", "SnapshotSucceeded", "10 rows"), generation=2),
        "Progressing",
        "Waiting for the Kubeloop operator to observe generation 2",
    ),
    # TrainingJob
    ("TrainingJob", obj("TrainingJob"), "Progressing", "Waiting for the Kubeloop operator"),
    (
        "TrainingJob",
        obj(
            "TrainingJob",
            cond("Ready", "False", "DatasetNotReady", "Dataset cancer is not Ready"),
            phase="Pending",
        ),
        "Progressing",
        "DatasetNotReady: Dataset cancer is not Ready",
    ),
    (
        "TrainingJob",
        obj(
            "TrainingJob",
            cond("Ready", "False", "Training", "Job t-train-abcde is running"),
            phase="Running",
        ),
        "Progressing",
        "Training: Job t-train-abcde is running",
    ),
    (
        "TrainingJob",
        obj(
            "TrainingJob",
            cond("Ready", "True", "Succeeded", "published cancer-v3"),
            phase="Succeeded",
        ),
        "Healthy",
        "Succeeded: published cancer-v3",
    ),
    (
        "TrainingJob",
        obj(
            "TrainingJob",
            cond("Ready", "False", "GateRejected", "f1 0.71 < 0.9"),
            phase="Rejected",
        ),
        "Degraded",
        "GateRejected: f1 0.71 < 0.9",
    ),
    (
        "TrainingJob",
        obj(
            "TrainingJob",
            cond("Ready", "False", "TrainingFailed", "BackoffLimitExceeded: Job has reached"),
            phase="Failed",
        ),
        "Degraded",
        "TrainingFailed: BackoffLimitExceeded: Job has reached",
    ),
    # ModelVersion
    ("ModelVersion", obj("ModelVersion"), "Progressing", "Waiting for the Kubeloop operator"),
    (
        "ModelVersion",
        obj(
            "ModelVersion",
            cond("Verified", "True", "DigestMatches", "sha256 9f86d081884c…"),
            cond("Ready", "True", "Verified", "cancer version 1"),
        ),
        "Healthy",
        "Verified: cancer version 1",
    ),
    (
        "ModelVersion",
        obj(
            "ModelVersion",
            cond("Ready", "False", "DigestMismatch", "sha256 of file:///m.onnx is 00"),
        ),
        "Degraded",
        "DigestMismatch: sha256 of file:///m.onnx is 00",
    ),
    (
        "ModelVersion",
        obj(
            "ModelVersion",
            cond("Ready", "False", "ArtifactNotFound", "file:///m.onnx does not exist"),
        ),
        "Degraded",
        "ArtifactNotFound: file:///m.onnx does not exist",
    ),
    (
        "ModelVersion",
        obj("ModelVersion", cond("Ready", "False", "StoreUnreachable", "s3://b/m.onnx: no s3fs")),
        "Progressing",
        "StoreUnreachable: s3://b/m.onnx: no s3fs",
    ),
    # ModelDeployment
    ("ModelDeployment", obj("ModelDeployment"), "Progressing", "Waiting for the Kubeloop operator"),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Ready", "False", "NoReadyVersion", "waiting for a version of cancer to be Ready"),
            phase="Pending",
        ),
        "Progressing",
        "NoReadyVersion: waiting for a version of cancer to be Ready",
    ),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Progressing", "False", "Complete", "serving version 1"),
            cond("Ready", "False", "Deploying", "version 1: waiting for ready pods"),
            cond("Degraded", "False", "AsExpected"),
        ),
        "Progressing",
        "Deploying: version 1: waiting for ready pods",
    ),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Progressing", "False", "Complete", "serving version 2"),
            cond("Ready", "True", "Serving", "version 2"),
            cond("Degraded", "False", "AsExpected"),
            phase="Serving",
        ),
        "Healthy",
        "Serving: version 2",
    ),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Progressing", "True", "Canary", "version 3 at 10%"),
            cond("Ready", "True", "Serving", "version 2"),
            cond("Degraded", "False", "AsExpected"),
            phase="Progressing",
        ),
        "Progressing",
        "Canary: version 3 at 10%",
    ),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Progressing", "False", "CanaryAborted", "canary of version 3 aborted"),
            cond("Ready", "True", "Serving", "version 2"),
            cond("Degraded", "False", "AsExpected"),
        ),
        "Degraded",
        "CanaryAborted: canary of version 3 aborted",
    ),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Ready", "False", "VersionMissing", "version 2 is gone"),
            phase="Degraded",
        ),
        "Degraded",
        "VersionMissing: version 2 is gone",
    ),
    (
        "ModelDeployment",
        obj(
            "ModelDeployment",
            cond("Ready", "True", "Serving", "version 2"),
            cond("Degraded", "True", "ServingErrors", "5xx above 5%"),
        ),
        "Degraded",
        "ServingErrors: 5xx above 5%",
    ),
]


@pytest.mark.parametrize("lua", INTERPRETERS)
@pytest.mark.parametrize(
    ("kind", "body", "status", "message"),
    CASES,
    ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_health(lua, kind, body, status, message):
    assert health(kind, body, lua) == {"status": status, "message": message}


def test_every_kind_has_a_script_and_every_state_is_covered():
    assert sorted(p.stem for p in SCRIPTS.glob("*.lua")) == sorted(k.lower() for k in KINDS)
    for kind in KINDS:
        seen = {c[2] for c in CASES if c[0] == kind}
        assert seen == {"Healthy", "Progressing", "Degraded"}, kind


def test_message_with_quotes_and_newlines_survives():
    body = obj("Dataset", cond("Ready", "False", "SnapshotFailed", 'bad "x"\nline 2'))
    assert health("Dataset", body) == {
        "status": "Degraded",
        "message": 'SnapshotFailed: bad "x"\nline 2',
    }


def test_install_doc_carries_each_script_for_argocd_cm():
    """docs/install.md shows the argocd-cm keys with the scripts exactly as in the chart."""
    doc = INSTALL_DOC.read_text()
    for kind in KINDS:
        key = f"resource.customizations.health.kubeloop.io_{kind}: |"
        assert key in doc, key
        block = doc.split(key, 1)[1]
        lines = block.splitlines()[1:]
        indent = re.match(r"^( *)", lines[0]).group(1)  # type: ignore[union-attr]
        body = []
        for line in lines:
            if line and not line.startswith(indent):
                break
            body.append(line[len(indent) :])
        script = (SCRIPTS / f"{kind.lower()}.lua").read_text()
        assert "\n".join(body).strip() == script.strip(), f"{kind}: docs/install.md differs"
