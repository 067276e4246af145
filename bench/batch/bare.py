"""The ceiling for `kubeloop predict`: the same work with nothing around it.

Read the table in pyarrow record batches, feed each batch's feature columns to
onnxruntime (numbers as float32, text as strings, shaped ``[rows, 1]``), append the
outputs and write Parquet — no validation, no checks, no temporary file, no digest.
Prints the seconds from the session loaded to the output closed, as ``kubeloop
predict`` reports its own.

    python bench/batch/bare.py MODEL_DIR DATA OUT BATCH_ROWS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def batches(data: str, batch_rows: int, types: dict[str, pa.DataType]):
    """Batches of exactly ``batch_rows`` rows (the last one fewer), as kubeloop makes them."""
    if data.endswith(".parquet"):
        yield from pq.ParquetFile(data).iter_batches(batch_size=batch_rows)
        return
    options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    pending = None
    for block in pacsv.open_csv(data, convert_options=options):
        table = pa.Table.from_batches([block] if pending is None else [*pending, block])
        while table.num_rows >= batch_rows:
            yield table.slice(0, batch_rows).combine_chunks().to_batches()[0]
            table = table.slice(batch_rows)
        pending = table.to_batches()
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def main(model_dir: str, data: str, out: str, batch_rows: int) -> None:
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    session = ort.InferenceSession(
        str(Path(model_dir) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = [(t["name"], t["datatype"]) for t in meta["inputs"]]
    types = {n: pa.string() if d == "BYTES" else pa.float64() for n, d in inputs}
    names = [o.name for o in session.get_outputs()]
    started = time.perf_counter()
    writer = None
    for batch in batches(data, batch_rows, types):
        n = batch.num_rows
        feed = {}
        for name, datatype in inputs:
            col = batch.column(name)
            if datatype == "BYTES":
                feed[name] = col.fill_null("missing").to_numpy(zero_copy_only=False).reshape(n, 1)
            else:
                feed[name] = col.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, 1)
        got = session.run(names, feed)
        extra = []
        for value in got:
            if value.ndim == 2 and value.shape[1] > 1:
                flat = pa.array(np.ascontiguousarray(value, dtype=np.float32).reshape(-1))
                extra.append(pa.FixedSizeListArray.from_arrays(flat, value.shape[1]))
            elif value.dtype == object:
                extra.append(pa.array(value.reshape(n), type=pa.string()))
            else:
                extra.append(pa.array(value.reshape(n)))
        table = pa.RecordBatch.from_arrays([*batch.columns, *extra], [*batch.schema.names, *names])
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema)
        writer.write_batch(table)
    if writer is not None:
        writer.close()
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
