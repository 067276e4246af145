"""Throughput and peak memory of `kubeloop snapshot` against a bare streaming read.

One generated CSV of ``--megabytes`` (numbers, a nullable number, three text columns, an
integer label), and, when PostgreSQL is installed (``make postgresql-tools``), a table
loaded from a smaller CSV of ``--sql-megabytes``:

- **kubeloop snapshot** — the real CLI as a process: record batches, type checks, the
  content digest, the stored copy, the profile (and for SQL the canonical ORDER BY,
  staged to Parquet);
- **bare read** — ``bench/data/bare.py`` as a process: a streaming ``pyarrow.csv`` read
  + sha256 of the batches, or ``COPY (same ordered query) TO STDOUT`` + sha256;
- **baseline** (``--baseline PATH``, optional): another `kubeloop` executable (e.g. an
  earlier release's) snapshotting the same file (and table), for before/after numbers.

Each is timed as a process, start to exit (wall and CPU seconds; on a shared machine the
CPU seconds move less), and its peak resident set is the kernel's (``wait4``: that
process alone). Goal: kubeloop ≥ 0.5x the bare read's rows/s and a
peak RSS under 1 GiB. Not a test: run with ``make bench-data``.

    python bench/data/bench_data.py [--megabytes 500] [--sql-megabytes 100]
        [--batch-rows 65536] [--baseline /path/to/old/kubeloop] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
GOAL_RATIO = 0.5
GOAL_RSS_MIB = 1024
WORDS = np.array([f"w{i:04d}" for i in range(5000)])
SLICE = 200_000


def _slice(rng: np.random.Generator, rows: int) -> pa.Table:
    columns: dict[str, object] = {f"f{i}": rng.normal(0, 1, rows).round(4) for i in range(4)}
    income = rng.normal(50, 15, rows).round(2)
    columns["income"] = pa.array(income, mask=rng.random(rows) < 0.05)
    for name in ("city", "street", "shop"):
        columns[name] = rng.choice(WORDS, rows)
    columns["label"] = rng.integers(0, 3, rows)
    return pa.table(columns)


def write_csv(path: Path, megabytes: float) -> int:
    """A CSV file of about ``megabytes`` MB; its rows."""
    rng = np.random.default_rng(0)
    rows = 0
    with pacsv.CSVWriter(str(path), _slice(rng, 1).schema) as writer:
        while path.stat().st_size < megabytes * 1e6:
            writer.write_table(_slice(rng, SLICE))
            rows += SLICE
    return rows


@dataclass
class Run:
    """One process: wall seconds, CPU seconds (user + system), peak RSS (MiB), rows it
    reported."""

    seconds: float
    cpu: float
    rss_mib: float
    rows: int


def measure(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` to its end: seconds, its own peak RSS, the rows its last line reports."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stdout}\n{stderr}")
    rows = int(json.loads(stdout.strip().splitlines()[-1])["rows"])
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, rows)


def snapshot(kubeloop: str, source: str, out: Path, batch_rows: int, *extra: str) -> list[str]:
    return [kubeloop, "snapshot", "--source", source, "--out", str(out), "--format",
            "parquet" if extra else "csv", "--batch-rows", str(batch_rows), *extra]  # fmt: skip


def row(source: str, what: str, run: Run, megabytes: float) -> str:
    return (f"| {source} | {what} | {run.rows:,} | {run.seconds:.1f} | {run.cpu:.1f} | "
            f"{run.rows / run.seconds:,.0f} | {megabytes / run.seconds:.1f} | "
            f"{run.rss_mib:.0f} |")  # fmt: skip


def csv_rows(args: argparse.Namespace, work: Path) -> list[tuple[str, Run, Run]]:
    """The CSV measurements: (label, kubeloop, ceiling) pairs, and the baseline if given."""
    data = work / "data.csv"
    write_csv(data, args.megabytes)
    megabytes = data.stat().st_size / 1e6
    env = {"KUBELOOP_TERMINATION_LOG": str(work / "termination")}
    ours = measure(snapshot(KUBELOOP, str(data), work / "snaps", args.batch_rows), env)
    bare = measure([sys.executable, str(HERE / "bare.py"), "csv", str(data)])
    print(row(f"CSV {megabytes:,.0f} MB", "kubeloop snapshot", ours, megabytes))
    print(row(f"CSV {megabytes:,.0f} MB", "bare pyarrow.csv + sha256", bare, megabytes))
    if args.baseline:
        old = measure([args.baseline, "snapshot", "--source", str(data), "--out",
                       str(work / "old-snaps")], env)  # fmt: skip
        print(row(f"CSV {megabytes:,.0f} MB", f"baseline {args.baseline}", old, megabytes))
    return [("CSV", ours, bare)]


def sql_rows(args: argparse.Namespace, work: Path) -> list[tuple[str, Run, Run]]:
    """The PostgreSQL measurements, on a table loaded from a generated CSV."""
    import psycopg

    from postgres import PASSWORD, PostgresServer

    data = work / "table.csv"
    write_csv(data, args.sql_megabytes)
    megabytes = data.stat().st_size / 1e6
    server = PostgresServer.start()
    try:
        columns = ", ".join([*(f"f{i} float8" for i in range(4)), "income float8",
                             "city text", "street text", "shop text", "label int8"])  # fmt: skip
        server.execute("DROP TABLE IF EXISTS bench", f"CREATE TABLE bench ({columns})")
        with (
            psycopg.connect(server.url(password=True)) as conn,
            conn.cursor().copy(b"COPY bench FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
            data.open("rb") as handle,
        ):
            while block := handle.read(1 << 20):
                copy.write(block)
        query = "SELECT * FROM bench"
        env = {"KUBELOOP_TERMINATION_LOG": str(work / "termination"), "PGPASSWORD": PASSWORD}
        argv = snapshot(KUBELOOP, server.url(), work / "sql-snaps", args.batch_rows,
                        "--query", query)  # fmt: skip
        ours = measure(argv, env)
        ordered = "SELECT * FROM bench ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9"  # kubeloop's order
        bare = measure([sys.executable, str(HERE / "bare.py"), "copy",
                        server.url(password=True), ordered])  # fmt: skip
        old = None
        if args.baseline:
            old = measure(snapshot(args.baseline, server.url(), work / "old-sql-snaps",
                                   args.batch_rows, "--query", query), env)  # fmt: skip
    finally:
        server.stop()
    print(row(f"PostgreSQL {megabytes:,.0f} MB", "kubeloop snapshot", ours, megabytes))
    print(row(f"PostgreSQL {megabytes:,.0f} MB", "bare COPY TO STDOUT + sha256", bare, megabytes))
    if old is not None:
        print(row(f"PostgreSQL {megabytes:,.0f} MB", f"baseline {args.baseline}", old, megabytes))
    return [("PostgreSQL", ours, bare)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=500, help="CSV size (2000: 2 GB)")
    parser.add_argument("--sql-megabytes", type=float, default=100)
    parser.add_argument("--batch-rows", type=int, default=65536)
    parser.add_argument("--baseline", help="another kubeloop executable to compare with")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"batches of {args.batch_rows:,} rows; {os.cpu_count()} CPUs; one run each")
    print()
    print("| source | measured | rows | seconds | CPU seconds | rows/s | MB/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-data-") as tmp:
        results = csv_rows(args, Path(tmp))
        if not args.no_postgres:
            try:
                results += sql_rows(args, Path(tmp))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # tests/needs.py fails the "test": not installed
                print(f"| PostgreSQL | not measured: {' '.join(str(exc).split())} | | | | | | |")
    print()
    for source, ours, bare in results:
        ratio = bare.seconds / ours.seconds
        verdict = "met" if ratio >= GOAL_RATIO and ours.rss_mib < GOAL_RSS_MIB else "NOT met"
        print(f"{source}: kubeloop {ratio:.2f}x the bare read's rows/s, peak RSS "
              f"{ours.rss_mib:.0f} MiB; goal >= {GOAL_RATIO}x and < {GOAL_RSS_MIB} MiB: "
              f"{verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
