"""The Argo CD health checks the chart composes (charts/kubeloop/argocd/), run by real Lua.

The chart renders each kind's check as an argocd-cm key (templates/argocd-health.yaml):
argocd/common.lua, the part every kind shares, followed by the kind's own
argocd/<kind>.lua. Argo CD evaluates a health script with a global ``obj`` (the live
object) and reads the table it returns. The harness here does the same: it defines ``obj``
as a Lua table literal, runs the rendered script as the body of a function, and prints the
returned table as JSON. Each script runs under lua5.4 and under lua5.1 (Argo CD's
gopher-lua implements Lua 5.1, so a 5.4-only construct must fail here rather than in a
cluster), against the objects of argocd_health_cases.yaml.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmchart import CHART, render
from needs import LUA, tool

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = CHART / "argocd"
INSTALL_DOC = ROOT / "docs" / "install.md"
INTERPRETERS = ("lua5.4", "lua5.1")
KINDS = ("Dataset", "TrainingJob", "ModelVersion", "ModelDeployment", "BatchPrediction")
KEY = "resource.customizations.health.kubeloop.io_{kind}"
CASES_FILE = Path(__file__).with_name("argocd_health_cases.yaml")

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


@cache
def checks() -> dict[str, str]:
    """The argocd-cm keys the chart renders, by kind."""
    docs = render(sets={"argocdHealthChecks.enabled": True})
    [config_map] = [d for d in docs if d["metadata"]["name"].endswith("-argocd-health")]
    data: dict[str, str] = config_map["data"]
    return {kind: data[KEY.format(kind=kind)] for kind in KINDS}


def health(kind: str, obj: dict[str, Any], lua: str = "lua5.4") -> dict[str, str]:
    program = (
        f"obj = {lua_literal(obj)}\nlocal hs = (function()\n{checks()[kind]}\nend)()\n{PRINTER}"
    )
    out = subprocess.run(
        [tool(lua, how=LUA), "-"],
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


def parse_condition(text: str) -> dict[str, Any]:
    """A condition from its case text, ``"<type>=<status> <reason>[: <message>]"``."""
    head, _, message = text.partition(": ")
    type_status, reason = head.split(" ")
    type_, status = type_status.split("=")
    return cond(type_, status, reason, message)


def case_object(kind: str, case: dict[str, Any]) -> dict[str, Any]:
    conditions = [parse_condition(c) for c in case.get("conditions", [])]
    status = {k: case[k] for k in ("phase",) if k in case}
    return obj(kind, *conditions, generation=case.get("generation", 1), **status)


# (kind, object, expected status, expected message)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (kind, case_object(kind, case), case["health"], case["message"])
    for kind, cases in yaml.safe_load(CASES_FILE.read_text()).items()
    for case in cases
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
    own = sorted(p.stem for p in SCRIPTS.glob("*.lua") if p.stem != "common")
    assert own == sorted(k.lower() for k in KINDS)
    assert (SCRIPTS / "common.lua").is_file()
    common = (SCRIPTS / "common.lua").read_text()
    for kind in KINDS:
        assert checks()[kind] == common + (SCRIPTS / f"{kind.lower()}.lua").read_text(), kind
        seen = {c[2] for c in CASES if c[0] == kind}
        # every kind has the three; a kind that can be suspended also reports Suspended
        assert seen - {"Suspended"} == {"Healthy", "Progressing", "Degraded"}, kind


def test_message_with_quotes_and_newlines_survives():
    body = obj("Dataset", cond("Ready", "False", "SnapshotFailed", 'bad "x"\nline 2'))
    assert health("Dataset", body) == {
        "status": "Degraded",
        "message": 'SnapshotFailed: bad "x"\nline 2',
    }


def test_install_doc_carries_each_script_for_argocd_cm():
    """docs/install.md shows the argocd-cm keys with the scripts exactly as the chart renders."""
    doc = INSTALL_DOC.read_text()
    for kind in KINDS:
        key = f"{KEY.format(kind=kind)}: |"
        assert key in doc, key
        block = doc.split(key, 1)[1]
        lines = block.splitlines()[1:]
        indent = re.match(r"^( *)", lines[0]).group(1)  # type: ignore[union-attr]
        body = []
        for line in lines:
            if line and not line.startswith(indent):
                break
            body.append(line[len(indent) :])
        assert "\n".join(body).strip() == checks()[kind].strip(), f"{kind}: docs/install.md differs"
