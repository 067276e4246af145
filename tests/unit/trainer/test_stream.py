"""Streaming reads: the content digest (format 2), type contradictions, exact profiles,
reservoir sampling."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeloop.api.v1alpha1 import DATA_VERSION, DatasetRef
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.trainer import data, sampling, stream
from kubeloop.trainer.errors import DataError


def table(rows: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "n": rng.integers(0, 9, size=rows),
            "word": rng.choice(["a", "bb", "c", "d\x1fe"], size=rows),
            "label": rng.choice([0, 1, 2], size=rows, p=[0.7, 0.2, 0.1]),
        }
    )
    frame.loc[::17, "x"] = None
    frame.loc[::13, "word"] = None
    return frame


def digest_of(path, fmt, rows):
    return stream.digest_of(list(stream.read_batches(str(path), fmt, batch_rows=rows)))


def test_digest_is_the_same_for_any_batch_split_format_and_column_order(tmp_path):
    frame = table()
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    frame[list(reversed(frame.columns))].to_csv(tmp_path / "t.csv", index=False)
    data.write_table(frame, str(tmp_path / "t.jsonl"), "jsonl")
    reference = digest_of(tmp_path / "t.parquet", "parquet", 1000)
    assert reference.startswith("sha256-v2:")
    assert len(reference) == len("sha256-v2:") + 64
    for rows in (1, 7, 64, 999, 5000):
        assert digest_of(tmp_path / "t.parquet", "parquet", rows) == reference
    assert digest_of(tmp_path / "t.csv", "csv", 33) == reference
    assert digest_of(tmp_path / "t.jsonl", "jsonl", 100) == reference


def test_digest_changes_with_one_cell_and_with_missing_versus_empty_text():
    frame = table(50)
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    reference = stream.digest_of([batch])
    changed = frame.copy()
    changed.loc[3, "n"] = 99
    assert stream.digest_of([pa.RecordBatch.from_pandas(changed, preserve_index=False)]) != (
        reference
    )
    empty, missing = (pa.record_batch({"w": pa.array(v, pa.string())}) for v in ([""], [None]))
    assert stream.digest_of([empty]) != stream.digest_of([missing])
    split = [pa.record_batch({"w": ["ab", "c"]})]
    joined = [pa.record_batch({"w": ["a", "bc"]})]
    assert stream.digest_of(split) != stream.digest_of(joined)


def test_integers_beyond_2_53_are_digested_and_profiled_as_their_float64(tmp_path):
    """64-bit ids past float64's exact range: the digest and profile take each as the
    nearest float64 (the documented form) instead of refusing the column."""
    big = [2**60 + 1, -(2**62), 2**53 + 1, 7]
    batch = pa.record_batch({"id": pa.array(big, pa.int64())})
    rounded = pa.record_batch({"id": pa.array([float(v) for v in big], pa.float64())})
    assert stream.digest_of([batch]) == stream.digest_of([rounded])
    profiler = stream.Profiler(bins=10)
    profiler.update(batch)
    (profile,) = profiler.finish(["id"], {}, len(big)).values()
    assert profile == data.profile_series(pd.Series([float(v) for v in big]), numeric=True)
    csv = tmp_path / "ids.csv"
    csv.write_text("id\n" + "\n".join(str(v) for v in big) + "\n")
    assert digest_of(csv, "csv", 2) == stream.digest_of([rounded])


def test_a_later_batch_that_contradicts_the_first_names_row_and_column(tmp_path):
    lines = [f'{{"a": {i}, "b": "t{i}"}}' for i in range(10)] + ['{"a": "many", "b": "t"}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'a' was read as integers .* row 10 is 'many'"):
        list(stream.read_batches(str(tmp_path / "d.jsonl"), "jsonl", batch_rows=4))
    lines[7] = '{"a": 7.5, "b": "t"}'
    (tmp_path / "e.jsonl").write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(DataError, match=r"column 'a' .* row 7 is 7\.5"):
        list(stream.read_batches(str(tmp_path / "e.jsonl"), "jsonl", batch_rows=4))


def test_a_csv_value_past_the_first_block_names_its_row(tmp_path):
    rows = 300_000  # several blocks of CSV text
    text = "a,b\n" + "".join(f"{i},{i % 7}\n" for i in range(rows)) + "oops,1\n"
    (tmp_path / "big.csv").write_text(text)
    with pytest.raises(
        DataError, match=rf"column 'a' was read as integers .* row {rows} is 'oops'"
    ):
        list(stream.read_batches(str(tmp_path / "big.csv"), "csv"))


def test_files_of_a_prefix_must_agree_on_types(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0]}), tmp_path / "part-1.parquet")
    pq.write_table(pa.table({"a": ["x", "y"]}), tmp_path / "part-2.parquet")
    with pytest.raises(DataError, match=r"column 'a' was read as numbers .* row 2 is 'x'"):
        list(stream.read_batches(f"{tmp_path}/", "parquet"))


def test_declared_types_name_the_row():
    declared = {"a": pa.int64()}
    conformer = stream.Conformer(declared)
    conformer.conform(pa.record_batch({"a": [1, 2]}), "t")
    with pytest.raises(DataError, match=r"column 'a': expected integer, found 2\.5 at row 3"):
        conformer.conform(pa.record_batch({"a": [1.0, 2.5]}), "t")


@pytest.mark.parametrize("collect", [0, 1 << 21], ids=["radix-only", "collect"])
@pytest.mark.parametrize("counted", [False, True], ids=["read", "top-counted"])
@pytest.mark.parametrize("rows", [1, 2, 10, 1001])
def test_streamed_profile_matches_the_whole_column_profile(
    tmp_path, monkeypatch, rows, counted, collect
):
    monkeypatch.setattr(stream, "COLLECT_LIMIT", collect)
    rng = np.random.default_rng(rows)
    values = np.round(rng.lognormal(size=rows), 2)
    values[::5] = np.nan
    values[1::7] = -0.0
    path = str(tmp_path / "v.arrow")
    top = np.zeros(1 << 16, dtype=np.int64)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, stream.VALUES_SCHEMA) as writer:
        for start in range(0, rows, 97):
            present = stream.present_floats(pa.array(values[start : start + 97]))
            top += stream.top_counts(present)
            writer.write_batch(pa.record_batch([present], schema=stream.VALUES_SCHEMA))
    missing = int(np.isnan(values).sum())
    streamed = stream.numeric_profile(path, rows - missing, missing, 10, top if counted else None)
    assert streamed == data.profile_series(pd.Series(values), numeric=True)


def test_histogram_equals_numpy_on_edges_ties_and_signs():
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.normal(size=5000).round(1), [-0.0, 0.0, 3.0, -3.0]])
    for edges in (
        np.unique(np.quantile(values, np.linspace(0, 1, 11))),
        np.array([-1.0, -0.0, 0.5, 0.5000001, 2.0]),
        np.array([-np.inf, 0.0, np.inf]),
    ):
        assert np.array_equal(stream.histogram(values, edges), np.histogram(values, edges)[0])


def test_text_counts_merged_across_batches_equal_pandas(monkeypatch):
    monkeypatch.setattr(stream, "BATCH_ROWS", 50)  # merge the counts every few batches
    rng = np.random.default_rng(2)
    words = pd.Series(rng.choice([f"w{i}" for i in range(300)], size=4000), dtype=object)
    words[::11] = None
    profiler = stream.Profiler(bins=10)
    for start in range(0, len(words), 123):
        chunk = pa.array(words[start : start + 123].tolist(), type=pa.string())
        profiler.update(pa.record_batch({"w": chunk}))
    found = profiler.finish(["w"], {}, len(words))["w"]
    assert found == data.profile_series(words, numeric=False)


def test_read_ahead_keeps_the_order_raises_the_read_error_and_stops_early():
    def batches(fail_at: int | None):
        for i in range(6):
            if i == fail_at:
                raise DataError(f"bad batch {i}")
            yield pa.record_batch({"i": [i]})

    assert [b.column(0)[0].as_py() for b in stream.read_ahead(batches(None))] == list(range(6))
    reader = stream.read_ahead(batches(4))
    assert [next(reader).column(0)[0].as_py() for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(DataError, match="bad batch 4"):
        next(reader)
    closed = []

    def endless():
        try:
            while True:
                yield pa.record_batch({"i": [0]})
        finally:
            closed.append(True)

    reader = stream.read_ahead(endless(), depth=1)
    next(reader)
    reader.close()  # the consumer stops: the thread ends and closes the source
    assert closed == [True]
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


@pytest.mark.parametrize("collect", [0, 1 << 21], ids=["radix-only", "collect"])
def test_exact_quantiles_equal_numpy_on_ties_signs_and_extremes(monkeypatch, collect):
    monkeypatch.setattr(stream, "COLLECT_LIMIT", collect)
    rng = np.random.default_rng(3)
    for values in (
        rng.normal(size=10_001) * 1e6,
        np.repeat([-0.0, 0.0, 1.5, -2.0], 100),
        np.array([np.finfo(float).min, -1e-300, 5e-324, np.finfo(float).max]),
    ):
        q = np.linspace(0, 1, 11)

        def select(ranks, v=values):
            chunks = lambda: (v[i : i + 333] for i in range(0, len(v), 333))  # noqa: E731
            return stream.order_statistics(chunks, ranks)

        assert np.array_equal(
            stream.exact_quantiles(select, len(values), q), np.quantile(values, q)
        )


def test_columns_with_few_values_are_profiled_from_their_counts():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 40, size=5000).astype(float)
    values[::9] = np.nan
    profiler = stream.Profiler(bins=10)
    for start in range(0, len(values), 700):
        profiler.update(pa.record_batch({"v": pa.array(values[start : start + 700])}))
    profile = profiler.finish(["v"], None, len(values))["v"]
    assert profile == data.profile_series(pd.Series(values), numeric=True)


def sample(frame: pd.DataFrame, rows: int, max_rows: int, seed: int) -> pd.DataFrame:
    sampler = sampling.Sampler(max_rows, seed, "label")
    for start in range(0, len(frame), rows):
        sampler.add(pa.Table.from_pandas(frame.iloc[start : start + rows], preserve_index=False))
    result = sampler.result()
    assert result is not None
    return result.to_pandas()


def test_reservoir_sample_is_deterministic_per_class_and_independent_of_batches():
    frame = table(5000).assign(row=np.arange(5000))
    first = sample(frame, 500, 300, seed=7)
    assert first.equals(sample(frame, 500, 300, seed=7))
    assert first.equals(sample(frame, 61, 300, seed=7))
    assert not first.equals(sample(frame, 500, 300, seed=8))
    assert len(first) == 300
    shares = first["label"].value_counts(normalize=True).sort_index()
    expected = frame["label"].value_counts(normalize=True).sort_index()
    assert np.allclose(shares.to_numpy(), expected.to_numpy(), atol=0.005)  # kept per class
    assert first["row"].is_unique
    assert first["row"].max() > 4000  # late rows get in too


def test_shares_keep_every_class_and_the_total():
    assert sampling.shares(10, [90, 9, 1]) == [8, 1, 1]
    assert sampling.shares(100, [5, 5]) == [5, 5]
    assert sum(sampling.shares(7, [3, 3, 3])) == 7
    assert sampling.shares(2, [5, 5, 5]) == [1, 1, 0]


def test_version_formats_and_folders():
    old, new = "sha256:" + "a" * 64, "sha256-v2:" + "b" * 64
    assert DatasetRef(name="d", version=old).version == old
    assert DatasetRef(name="d", version=new).version == new
    assert ArtifactLayout.snapshot_dir("s3://b/d", old) == "s3://b/d/" + "a" * 64
    assert ArtifactLayout.snapshot_dir("s3://b/d", new) == "s3://b/d/v2-" + "b" * 64
    assert DATA_VERSION.startswith("^sha256")
