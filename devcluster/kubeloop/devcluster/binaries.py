"""Where the control-plane binaries are.

``hack/toolchain.sh --print-dir COMPONENT`` owns the cache layout; this module
asks it rather than repeating it. Binaries supplied from outside win, with
controller-runtime envtest's precedence: ``TEST_ASSET_<NAME>`` (for example
``TEST_ASSET_KUBE_APISERVER``) first, then ``$KUBEBUILDER_ASSETS/<name>``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: binary -> the toolchain component that builds it
COMPONENT_OF: dict[str, str] = {
    "kube-apiserver": "kubernetes",
    "kube-controller-manager": "kubernetes",
    "kube-scheduler": "kubernetes",
    "kubectl": "kubernetes",
    "kubelet": "kubernetes",
    "kube-proxy": "kubernetes",
    "etcd": "etcd",
    "kwok": "kwok",
    "helm": "helm",
    "versitygw": "versitygw",
    "fake-gcs-server": "fake-gcs-server",
}

#: what ``kubeloop cluster up`` runs
CLUSTER_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)


class MissingBinaryError(RuntimeError):
    """A binary is neither supplied from outside nor built."""


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    for candidate in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (candidate / "hack" / "toolchain.sh").is_file():
            return candidate
    return None


def toolchain_script() -> Path:
    root = repo_root()
    if root is None:
        raise MissingBinaryError(
            "hack/toolchain.sh not found: run from a Kubeloop checkout (editable install), "
            "or point TEST_ASSET_<NAME> / KUBEBUILDER_ASSETS at the binaries"
        )
    return root / "hack" / "toolchain.sh"


def external(name: str) -> Path | None:
    """The binary supplied through ``TEST_ASSET_*`` or ``KUBEBUILDER_ASSETS``, if any."""
    var = "TEST_ASSET_" + name.upper().replace("-", "_")
    value = os.environ.get(var)
    if value and os.access(value, os.X_OK) and Path(value).is_file():
        return Path(value)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        path = Path(assets) / name
        if os.access(path, os.X_OK) and path.is_file():
            return path
    return None


def component_dir(component: str) -> Path:
    out = subprocess.run(
        ["bash", str(toolchain_script()), "--print-dir", component],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if out.returncode != 0:
        raise MissingBinaryError(f"hack/toolchain.sh --print-dir {component}: {out.stderr.strip()}")
    return Path(out.stdout.strip())


@dataclass(frozen=True)
class Binaries:
    """Resolved paths of the binaries a cluster runs."""

    paths: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]

    @classmethod
    def resolve(cls, names: tuple[str, ...] = CLUSTER_BINARIES) -> Binaries:
        """Find each of ``names``, or raise :class:`MissingBinaryError` naming those missing."""
        paths: dict[str, Path] = {}
        missing: list[str] = []
        dirs: dict[str, Path] = {}
        for name in names:
            found = external(name)
            if found is None:
                component = COMPONENT_OF[name]
                if component not in dirs:
                    dirs[component] = component_dir(component)
                path = dirs[component] / name
                if os.access(path, os.X_OK) and path.is_file():
                    found = path
            if found is None:
                missing.append(name)
            else:
                paths[name] = found
        if missing:
            raise MissingBinaryError(
                f"missing binaries: {', '.join(missing)}; build them with `make toolchain` "
                "(hack/toolchain.sh, about 10 minutes cold) or set TEST_ASSET_<NAME> / "
                "KUBEBUILDER_ASSETS"
            )
        return cls(paths)
