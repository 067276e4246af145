#!/usr/bin/env python3
"""Generate the Python modules of the Open Inference Protocol v2 gRPC service.

    hack/grpc_stubs.py            write them beside the .proto (make grpc-stubs)
    hack/grpc_stubs.py --check    exit 1 when the committed ones differ (make verify-grpc-stubs)

protoc (from grpcio-tools, pinned in the dev extra) writes ``*_pb2.py``, its type stub
``*_pb2.pyi`` and ``*_pb2_grpc.py``; they are committed, so neither the image nor a user
needs grpcio-tools, and this check keeps them equal to what the .proto generates.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent / "serving"
PROTO = Path("kubeloop/serving/grpc_v2/grpc_predict_v2.proto")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Run protoc on the .proto into ``out``; the generated files, relative to ``out``."""
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    stem = PROTO.with_suffix("")
    return [Path(f"{stem}{suffix}") for suffix in SUFFIXES]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = []
        for rel in files:
            new = (Path(tmp) / rel).read_bytes()
            target = ROOT / rel
            if target.exists() and target.read_bytes() == new:
                continue
            if check:
                stale.append(str(target))
            else:
                target.write_bytes(new)
    if stale:
        print("out of date with the .proto (run `make grpc-stubs`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
