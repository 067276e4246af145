"""`kubeloop snapshot` holds a batch in memory, not the data set: a generated CSV many
times the size of the batch is snapshotted by a child process whose peak RSS (from
``wait4``, that child's alone) must stay far below the file's size."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .conftest import KUBELOOP

ROWS = 1_500_000  # ~70 MiB of CSV text, several times that as a pandas frame
BATCH_ROWS = 4096


def write_csv(path: Path, rows: int) -> None:
    """Numbers, a nullable number, words and an integer label, written in slices."""
    rng = np.random.default_rng(0)
    with pacsv.CSVWriter(str(path), _table(rng, 1).schema) as writer:
        for start in range(0, rows, 200_000):
            writer.write_table(_table(rng, min(200_000, rows - start)))


WORDS = np.array([f"w{i:04d}" for i in range(5000)])


def _table(rng: np.random.Generator, rows: int) -> pa.Table:
    """Short text cells: small in a file, large as Python objects in a whole frame."""
    columns: dict[str, object] = {f"f{i}": rng.normal(0, 1, rows).round(3) for i in range(2)}
    income = rng.normal(50, 15, rows).round(1)
    columns["income"] = pa.array(income, mask=rng.random(rows) < 0.05)
    for name in ("city", "street", "shop"):
        columns[name] = rng.choice(WORDS, rows)
    columns["label"] = rng.integers(0, 3, rows)
    return pa.table(columns)


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.Popen[str]]:
    """Run ``argv``; its own peak resident set (MiB) as the kernel accounts it."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, proc


def test_snapshot_memory_is_bounded_by_the_batch(tmp_path):
    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    write_csv(big, ROWS)
    write_csv(small, 1000)
    file_mib = big.stat().st_size / 2**20
    env = {**os.environ, "KUBELOOP_TERMINATION_LOG": str(tmp_path / "termination")}
    peaks = {}
    for name, path in (("small", small), ("big", big)):
        argv = [KUBELOOP, "snapshot", "--source", str(path), "--out", str(tmp_path / name),
                "--batch-rows", str(BATCH_ROWS)]  # fmt: skip
        peaks[name], proc = peak_rss_mib(argv, env)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["rows"] == ROWS
    growth = peaks["big"] - peaks["small"]
    message = f"peak RSS {peaks} MiB for a {file_mib:.0f} MiB file"
    assert file_mib > 50, message
    assert growth < 32, message  # a whole frame would be several times the file
    print(message)
