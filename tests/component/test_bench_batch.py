"""The batch benchmark runs end to end on a small file (its numbers are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_batch_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "batch" / "bench_batch.py"), "--rows", "5000",
         "--runs", "1", "--batch-rows", "1000"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("| CSV |") for line in lines), result.stdout
    assert any(line.startswith("| PARQUET |") for line in lines), result.stdout
    assert "goal kubeloop" in result.stdout
