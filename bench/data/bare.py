"""The ceiling for `kubeloop snapshot`: reading the same data with nothing around it.

``csv PATH BATCH_ROWS``: a streaming ``pyarrow.csv`` read (the same block size) with
sha256 over every batch's column buffers — no type checks, no copy, no profile.
``copy URL QUERY``: ``COPY (QUERY) TO STDOUT`` through psycopg, sha256 over the bytes.
Prints ``{"rows": ..., "seconds": ...}`` (seconds from start to the last byte).

    python bench/data/bare.py csv DATA.csv 65536
    python bench/data/bare.py copy postgresql://... "SELECT ..."
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import pyarrow as pa
import pyarrow.csv as pacsv

CSV_BLOCK = 1 << 20  # as kubeloop.trainer.stream reads


def read_csv(path: str) -> int:
    hasher, rows = hashlib.sha256(), 0
    options = pacsv.ReadOptions(block_size=CSV_BLOCK)
    with pa.OSFile(path, "rb") as handle, pacsv.open_csv(handle, read_options=options) as reader:
        for batch in reader:
            rows += batch.num_rows
            for column in batch.columns:
                for buffer in column.buffers():
                    if buffer is not None:
                        hasher.update(buffer)
    return rows


def copy_out(url: str, query: str) -> int:
    import psycopg

    hasher, lines = hashlib.sha256(), 0
    with (
        psycopg.connect(url) as conn,
        conn.cursor().copy(f"COPY ({query}) TO STDOUT".encode()) as copy,
    ):
        for block in copy:
            hasher.update(block)
            lines += bytes(block).count(b"\n")
    return lines


def main() -> None:
    started = time.perf_counter()
    rows = read_csv(sys.argv[2]) if sys.argv[1] == "csv" else copy_out(sys.argv[2], sys.argv[3])
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main()
