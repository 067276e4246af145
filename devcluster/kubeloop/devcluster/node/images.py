"""Images for a node without a registry: one-layer docker-archive tarballs made here.

The pause image (the pod sandbox) is built from ``pause.go``, the busybox image (a shell
for tests and debugging) from Debian's static busybox, the CoreDNS image from a
``go install`` of CoreDNS (the Go module proxy; minutes once, then cached). Each tarball
is what ``docker save`` writes, reproducible (name order, mtime 0, root-owned), and is
kept under ``images/`` in the node's state dir.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from kubeloop.devcluster.node.commands import run
from kubeloop.devcluster.node.config import BUSYBOX_IMAGE, PAUSE_IMAGE, NodeConfig

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = Path("/bin/busybox")


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tree_tar(rootfs: Path, out: Path) -> None:
    """``rootfs``'s contents as a tar, in name order, owned by root, mtime 0."""
    entries = sorted(p.relative_to(rootfs) for p in rootfs.rglob("*"))
    with tarfile.open(out, "w") as tar:
        for rel in entries:
            tar.add(rootfs / rel, arcname=str(rel), recursive=False, filter=_normalise)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalise(tarfile.TarInfo(name))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_config(diff_id: str, entrypoint: list[str] | None, cmd: list[str] | None) -> bytes:
    """The image's config blob (amd64 linux, one layer)."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [PATH_ENV], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }
    return json.dumps(config, separators=(",", ":")).encode()


def docker_archive(
    ref: str,
    rootfs: Path,
    out: Path,
    entrypoint: list[str] | None,
    cmd: list[str] | None = None,
) -> None:
    """Write ``out``: the image ``ref`` with ``rootfs`` as its one layer, as ``docker save``
    lays it out (``manifest.json``, the config blob, ``<diff id>/layer.tar``)."""
    with tempfile.TemporaryDirectory() as work:
        layer = Path(work) / "layer.tar"
        _tree_tar(rootfs, layer)
        diff_id = hashlib.sha256(layer.read_bytes()).hexdigest()
        config = image_config(diff_id, entrypoint, cmd)
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]
        partial = out.with_suffix(".part")
        with tarfile.open(partial, "w") as tar:
            _add_bytes(tar, config_name, config)
            tar.add(layer, arcname=f"{diff_id}/layer.tar", filter=_normalise)
            _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        partial.replace(out)


def go_env(cfg: NodeConfig, **extra: str) -> dict[str, str]:
    """A static, reproducible Go build with the local toolchain and the shared caches."""
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-trimpath",
        "GOCACHE": os.environ.get("GOCACHE") or str(cfg.cache / "go" / "build"),
        "GOMODCACHE": os.environ.get("GOMODCACHE") or str(cfg.cache / "go" / "mod"),
        **extra,
    }


def pause_rootfs(cfg: NodeConfig, rootfs: Path) -> None:
    """``/pause``, built from ``pause.go``."""
    src = rootfs.parent / "src"
    src.mkdir()
    shutil.copy(Path(__file__).with_name("pause.go"), src / "main.go")
    (src / "go.mod").write_text("module kubeloop.local/pause\n\ngo 1.22\n")
    argv = ["go", "build", "-ldflags=-s -w", "-o", str(rootfs / "pause"), "."]
    run(argv, env=go_env(cfg), cwd=src, timeout=600)


def busybox_rootfs(_cfg: NodeConfig, rootfs: Path) -> None:
    """Debian's static busybox with every applet linked, and a root user."""
    (rootfs / "bin").mkdir()
    (rootfs / "etc").mkdir()
    (rootfs / "tmp").mkdir()
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in run([str(BUSYBOX), "--list"]).split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")


def coredns_binary(cfg: NodeConfig) -> Path:
    """CoreDNS built once with ``go install`` into ``$KUBELOOP_CACHE/bin/coredns-VERSION``."""
    bin_dir = cfg.cache / "bin" / f"coredns-{cfg.coredns_version}"
    binary = bin_dir / "coredns"
    if not os.access(binary, os.X_OK):
        bin_dir.mkdir(parents=True, exist_ok=True)
        module = f"github.com/coredns/coredns@{cfg.coredns_version}"
        run(
            ["go", "install", "-ldflags=-s -w", module],
            env=go_env(cfg, GOBIN=str(bin_dir)),
            timeout=1800,
        )
    return binary


def coredns_rootfs(cfg: NodeConfig, rootfs: Path) -> None:
    shutil.copy(coredns_binary(cfg), rootfs / "coredns")


class Images:
    """The node's own images: built once into ``images/``, imported on each ``up``."""

    def __init__(self, cfg: NodeConfig, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log
        self.dir = cfg.path("images")

    def _ensure(
        self,
        file: str,
        ref: str,
        fill: Callable[[NodeConfig, Path], None],
        entrypoint: list[str] | None,
        cmd: list[str] | None = None,
    ) -> Path:
        out = self.dir / file
        if not out.is_file():
            self.log(f"building {ref}")
            self.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as work:
                rootfs = Path(work) / "rootfs"
                rootfs.mkdir()
                fill(self.cfg, rootfs)
                docker_archive(ref, rootfs, out, entrypoint, cmd)
            self.log(f"built {ref} ({out})")
        return out

    def base(self) -> list[Path]:
        """The pause and busybox images."""
        return [
            self._ensure("pause.tar", PAUSE_IMAGE, pause_rootfs, ["/pause"]),
            self._ensure("busybox.tar", BUSYBOX_IMAGE, busybox_rootfs, None, ["sh"]),
        ]

    def coredns(self) -> Path:
        version = self.cfg.coredns_version
        name = f"coredns-{version}.tar"
        return self._ensure(name, self.cfg.coredns_image, coredns_rootfs, ["/coredns"])
