"""Rows per second of `kubeloop predict` against a bare pyarrow + onnxruntime loop.

One generated table (numbers, a nullable number and a text feature), a model trained on
a sample of it by `kubeloop train`, and, for CSV and Parquet input (Parquet output):

- **kubeloop predict** — the real CLI as a process: record batches, the server's input
  checks, the temporary file renamed into place, the output's sha256;
- **bare loop** — ``bench/batch/bare.py`` as a process: the same pyarrow read, the same
  onnxruntime call and the same Parquet write, with nothing around them.

Both are timed as processes, start to exit (imports and model load included), and by
what each reports of its scoring alone (model loaded to output closed); each runs
``--runs`` times, taking turns to go first, and the median counts. Both outputs must hold the same
predictions. Goal: kubeloop ≥ 0.8x the bare loop. Not a test: run with
``make bench-batch``.

    python bench/batch/bench_batch.py [--rows 1000000] [--runs 3] [--batch-rows 65536]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT

HERE = Path(__file__).resolve().parent
KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
GOAL = 0.8
ESTIMATOR = "LogisticRegression"


def table(rows: int, seed: int = 0) -> pa.Table:
    """Eight numeric features, a nullable one and a city; a binary target."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {f"f{i}": rng.normal(0, 1, rows).round(4) for i in range(8)}
    income = rng.normal(50, 15, rows).round(2)
    income[rng.random(rows) < 0.05] = np.nan
    city = rng.choice(np.array(["paris", "rome", "oslo", "lima"]), rows)
    score = columns["f0"] + 0.5 * columns["f1"] + (city == "rome") + rng.normal(0, 1, rows)  # type: ignore[operator]
    columns["income"] = pa.array(income, from_pandas=True)
    columns["city"] = city
    columns["y"] = np.where(score > 0.5, "yes", "no")
    return pa.table(columns)


def train(sample: Path, out: Path) -> Path:
    argv = [KUBELOOP, "train", "--data", str(sample), "--target", "y", "--task",
            "classification", "--estimator", ESTIMATOR, "--out", str(out)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return out


@dataclass
class Times:
    """Seconds of one run: the process, start to exit; and its scoring, from the model
    loaded to the output closed (as the process reports it)."""

    process: float
    scoring: float


def timed(argv: list[str], key: str) -> Times:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return Times(seconds, float(json.loads(result.stdout.strip().splitlines()[-1])[key]))


def median(runs: list[Times]) -> Times:
    return Times(
        statistics.median(t.process for t in runs), statistics.median(t.scoring for t in runs)
    )


def same_predictions(a: Path, b: Path) -> None:
    left = pq.read_table(a, columns=[LABEL_OUTPUT, PROBA_OUTPUT])
    right = pq.read_table(b, columns=[LABEL_OUTPUT, PROBA_OUTPUT])
    if not left.equals(right):
        raise SystemExit(f"{a} and {b} hold different predictions")


def measure(model: Path, data: Path, work: Path, runs: int, batch_rows: int) -> tuple[Times, Times]:
    """Median times of kubeloop predict and of the bare loop on ``data``."""
    ours, bare = work / "kubeloop.parquet", work / "bare.parquet"
    predict = [KUBELOOP, "predict", "--model", str(model), "--data", str(data),
               "--out", str(ours), "--batch-rows", str(batch_rows)]  # fmt: skip
    loop = [sys.executable, str(HERE / "bare.py"), str(model), str(data), str(bare),
            str(batch_rows)]  # fmt: skip
    times: dict[str, list[Times]] = {"kubeloop": [], "bare": []}
    for run in range(runs):  # alternate which goes first
        order = [("kubeloop", predict, "duration_seconds"), ("bare", loop, "seconds")]
        for name, argv, key in order if run % 2 == 0 else order[::-1]:
            times[name].append(timed(argv, key))
    same_predictions(ours, bare)
    return median(times["kubeloop"]), median(times["bare"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=65536)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-batch-") as tmp:
        work = Path(tmp)
        data = table(args.rows)
        pacsv.write_csv(data.slice(0, 20_000), work / "sample.csv")
        model = train(work / "sample.csv", work / "model")
        pacsv.write_csv(data, work / "data.csv")
        pq.write_table(data, work / "data.parquet")
        print(f"{args.rows:,} rows, {ESTIMATOR}, batches of {args.batch_rows:,} rows, "
              f"median of {args.runs} runs; output Parquet")  # fmt: skip
        print()
        print("| input | measured | kubeloop predict rows/s | bare loop rows/s | ratio |")
        print("|---|---|---|---|---|")
        ratios = []
        for name in ("data.csv", "data.parquet"):
            ours, bare = measure(model, work / name, work, args.runs, args.batch_rows)
            fmt = name.split(".")[1].upper()
            for what, a, b in (
                ("process, start to exit", ours.process, bare.process),
                ("scoring, model loaded to output closed", ours.scoring, bare.scoring),
            ):
                ratios.append(b / a)
                print(f"| {fmt} | {what} | {args.rows / a:,.0f} | {args.rows / b:,.0f} | "
                      f"{b / a:.2f}x |", flush=True)  # fmt: skip
        print()
        verdict = "met" if min(ratios) >= GOAL else "NOT met"
        print(f"goal kubeloop >= {GOAL}x the bare loop: {verdict} (lowest {min(ratios):.2f}x)")


if __name__ == "__main__":
    main()
