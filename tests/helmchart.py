"""The Helm chart rendered and installed with the toolchain's helm.

Shared by the chart's component tests (lint, template, values) and its cluster tests
(install into the local control plane). helm keeps its cache, config and data in a
private directory, so a developer's own helm setup never leaks in.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from needs import toolchain_binary

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kubeloop"
CRD_DIR = ROOT / "crds"
#: The ci/ scenario files, by name.
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "kubeloop"
NAMESPACE = "kubeloop-system"


@cache
def helm_bin() -> str:
    return toolchain_binary("helm")


@cache
def _helm_home() -> str:
    return tempfile.mkdtemp(prefix="kubeloop-helm-")


def helm(
    *args: str, kubeconfig: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run helm with its cache, config and data under a private directory."""
    home = _helm_home()
    env = {
        **os.environ,
        "HELM_CACHE_HOME": f"{home}/cache",
        "HELM_CONFIG_HOME": f"{home}/config",
        "HELM_DATA_HOME": f"{home}/data",
    }
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    out = subprocess.run(
        [helm_bin(), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out


def value_args(values: tuple[str, ...] = (), sets: dict[str, Any] | None = None) -> list[str]:
    """helm's arguments for these ci/ files and --set-json values (keys may be dotted)."""
    args: list[str] = []
    for name in values:
        args += ["-f", str(CHART / "ci" / name)]
    for key, value in (sets or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render_text(
    *values: str,
    sets: dict[str, Any] | None = None,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    include_crds: bool = False,
) -> str:
    """What `helm template` prints for these ci/ files and --set-json values."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    return helm(*args, *value_args(values, sets)).stdout


def render(*values: str, **kwargs: Any) -> list[dict[str, Any]]:
    """The objects `helm template` prints for these ci/ files and --set-json values."""
    return [d for d in yaml.safe_load_all(render_text(*values, **kwargs)) if d]
