"""Small data sets written to disk, and the `kubeloop` CLI run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # train_helpers (--import-mode=importlib puts no test folder there)
    sys.path.insert(0, HERE)


class Result:
    """A finished `kubeloop` process: exit code, output, its JSON result line and the
    termination message it wrote."""

    def __init__(self, proc: subprocess.CompletedProcess[str], termination: Path) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.summary = (
            json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
        )
        self.termination = termination.read_text() if termination.exists() else ""


def run_kubeloop(args: list[str], termination: Path, env: dict[str, str] | None = None) -> Result:
    """Run `kubeloop ARGS` writing its termination message to ``termination`` (with ``env``
    added to this process's environment)."""
    termination.unlink(missing_ok=True)
    env = {**os.environ, **(env or {}), "KUBELOOP_TERMINATION_LOG": str(termination)}
    proc = subprocess.run(
        [KUBELOOP, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    return Result(proc, termination)


@pytest.fixture
def kubeloop(tmp_path: Path):
    """Run `kubeloop ARGS` with a termination-message file, return a Result."""

    def run(*args: str) -> Result:
        return run_kubeloop(list(args), tmp_path / "termination-log")

    return run


@pytest.fixture
def kubeloop_all(tmp_path: Path):
    """Run every `kubeloop ARGS` of a dict as its own process, a few at a time; Results by key."""

    def run(commands: dict[str, list[str]]) -> dict[str, Result]:
        def one(key: str) -> Result:
            return run_kubeloop(commands[key], tmp_path / f"termination-{key}")

        with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
            return dict(zip(commands, pool.map(one, commands), strict=True))

    return run


@pytest.fixture
def snapshot(kubeloop):
    """Run `kubeloop snapshot` of ``source`` in ``fmt`` into ``out`` (then ``extra``)."""

    def run(source: Path | str, fmt: str, out: Path | str, *extra: str) -> Result:
        return kubeloop(
            "snapshot", "--source", str(source), "--format", fmt, "--out", str(out), *extra
        )

    return run


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    cancer = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, 4, -1]]
    cancer.to_csv(root / "cancer.csv", index=False)
    cancer.to_parquet(root / "cancer.parquet", index=False)
    cancer[list(reversed(cancer.columns))].to_json(
        root / "cancer.jsonl", orient="records", lines=True
    )
    diabetes = load_diabetes(as_frame=True).frame
    diabetes.to_csv(root / "diabetes.csv", index=False)
    rng = np.random.default_rng(0)
    n = 400
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(10, 3, n)
    mixed = pd.DataFrame(
        {
            "colour": colour,
            "size": size,
            "label": np.where((colour == "red") ^ (size > 11), "yes", "no"),
        }
    )
    mixed.loc[::17, "size"] = np.nan
    mixed.to_csv(root / "mixed.csv", index=False)
    return root


#: Files cancer.csv is split into under parts/ in the object-store tests.
PARTS = 3


def put_cancer(fs: Any, bucket: str, csv: Path) -> None:
    """``csv`` as ``<bucket>/cancer.csv`` whole, and split in PARTS files under
    ``<bucket>/parts/`` (a source that a prefix or a glob reads back as one table)."""
    fs.put_file(str(csv), f"{bucket}/cancer.csv")
    frame = pd.read_csv(csv)
    step = -(-len(frame) // PARTS)
    for i in range(PARTS):
        part = frame.iloc[i * step : (i + 1) * step].to_csv(index=False).encode()
        fs.pipe(f"{bucket}/parts/part-{i}.csv", part)
