"""`kubeloop predict` as a real process, checked against a real `kubeloop serve`.

Each file is larger than the batch size, so the answers cross several batches; every
row's prediction must equal what the server answers for that row over KServe V1.
Bad input exits 2 with one line naming the column and row, and leaves nothing at the
output (nor a temporary file beside it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from serving_helpers import KUBELOOP, Server, serving

from kubeloop.contracts.artifacts import MISSING_TEXT, PROBA_OUTPUT, ArtifactLayout, ModelMetadata
from kubeloop.contracts.results import TERMINATION_LOG_ENV, JobResult
from kubeloop.inference import task_outputs

BATCH_ROWS = "64"


def predict(model: Path, data: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBELOOP), "predict", "--model", str(model), "--data", str(data), "--out", str(out),
         "--batch-rows", BATCH_ROWS, *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def served(server: Server, name: str, records: list[dict[str, object]]) -> dict[str, list]:
    """The server's V1 answer for ``records``, 200 rows a request."""
    answers: dict[str, list] = {"predictions": [], "probabilities": []}
    with server.client() as http:
        for start in range(0, len(records), 200):
            body = {"instances": records[start : start + 200]}
            r = http.post(f"/v1/models/{name}:predict", json=body)
            assert r.status_code == 200, r.text
            for key, values in r.json().items():
                answers[key] += values
    return answers


def records_of(table: pa.Table, meta: ModelMetadata) -> list[dict[str, object]]:
    """The feature values of each row as a client sends them (missing text as the model's
    stand-in, a missing number as null)."""
    features = [t.name for t in meta.inputs]
    rows = table.select(features).to_pylist()
    text = {t.name for t in meta.inputs if t.datatype == "BYTES"}
    return [
        {k: (MISSING_TEXT if v is None and k in text else v) for k, v in row.items()}
        for row in rows
    ]


def read_output(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    header = path.read_text().splitlines()[0].replace('"', "").split(",")
    floats = {n: pa.float32() for n in header if n.startswith(PROBA_OUTPUT) or n == "variable"}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=floats))


def probabilities(table: pa.Table, classes: list[object]) -> np.ndarray:
    if PROBA_OUTPUT in table.column_names:
        return np.array(table.column(PROBA_OUTPUT).to_pylist(), dtype=np.float32)
    columns = [f"{PROBA_OUTPUT}.{c}" for c in classes]
    return np.stack([table.column(c).to_numpy() for c in columns], axis=1).astype(np.float32)


def convert(src: Path, dst: Path) -> Path:
    """The same table in ``dst``'s format."""
    table = pacsv.read_csv(src) if src.suffix == ".csv" else pq.read_table(src)
    if dst.suffix == ".parquet":
        pq.write_table(table, dst)
    else:
        pacsv.write_csv(table, dst)
    return dst


def check_against_server(model: Path, data: Path, out: Path) -> None:
    result = predict(model, data, out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    meta = ModelMetadata.model_validate_json((model / ArtifactLayout.METADATA).read_bytes())
    source = pacsv.read_csv(data) if data.suffix == ".csv" else pq.read_table(data)
    table = read_output(out)
    assert summary["kind"] == "predict"
    assert summary["rows"] == source.num_rows > int(BATCH_ROWS)
    assert table.num_rows == source.num_rows
    assert table.column_names[: len(source.column_names)] == source.column_names
    label, proba = task_outputs(meta.task)
    with serving(model, "--name", "m") as server:
        answers = served(server, "m", records_of(source, meta))
    got = table.column(label).to_pylist()
    if meta.task == "regression":
        expected = np.asarray(answers["predictions"], dtype=np.float32)
        assert np.array_equal(np.asarray(got, dtype=np.float32), expected)
        return
    assert [str(v) for v in got] == [str(v) for v in answers["predictions"]]
    assert proba is not None
    expected_proba = np.asarray(answers["probabilities"], dtype=np.float32)
    assert np.array_equal(probabilities(table, list(meta.classes or [])), expected_proba)


def test_csv_to_parquet_matches_online_serving(mixed_model, data_dir, tmp_path):
    # a nullable number (income) and a text feature (city) with a missing value
    data = tmp_path / "mixed.csv"
    lines = (data_dir / "mixed.csv").read_text().splitlines()
    lines[3] = ",".join([*lines[3].split(",")[:2], "", lines[3].split(",")[3]])  # no city
    data.write_text("\n".join(lines) + "\n")
    check_against_server(mixed_model, data, tmp_path / "out" / "scored.parquet")


def test_parquet_to_csv_matches_online_serving(mixed_model, data_dir, tmp_path):
    data = convert(data_dir / "mixed.csv", tmp_path / "mixed.parquet")
    check_against_server(mixed_model, data, tmp_path / "scored.csv")


def test_regression_csv_to_csv_and_parquet_to_parquet(diabetes_model, data_dir, tmp_path):
    check_against_server(diabetes_model, data_dir / "diabetes.csv", tmp_path / "a.csv")
    data = convert(data_dir / "diabetes.csv", tmp_path / "diabetes.parquet")
    check_against_server(diabetes_model, data, tmp_path / "b.parquet")


def test_output_format_flag_overrides_the_suffix(diabetes_model, data_dir, tmp_path):
    out = tmp_path / "scores.out"
    result = predict(diabetes_model, data_dir / "diabetes.csv", out, "--format", "parquet")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).column_names[-1] == task_outputs("regression")[0]


def write_bad(data_dir: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of the mixed data with one fault, and what the error must say."""
    table = pacsv.read_csv(data_dir / "mixed.csv")
    if case == "missing column":
        bad = table.drop_columns(["city"])
        needle = "column 'city': missing from the data"
    else:
        # text in a numeric feature, in a late batch (earlier batches are written by then)
        ages = [str(v) for v in table.column("age").to_pylist()]
        ages[500] = "forty"
        bad = table.set_column(0, "age", pa.array(ages))
        needle = "column 'age' takes numbers, but row 500 is 'forty'"
    path = tmp_path / f"bad.{'csv' if 'csv' in case or case == 'missing column' else 'parquet'}"
    if path.suffix == ".csv":
        pacsv.write_csv(bad, path)
    else:
        pq.write_table(bad, path)
    return path, needle


@pytest.mark.parametrize("case", ["missing column", "text in a number (csv)", "text (parquet)"])
@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_bad_input_exits_2_naming_column_and_row_and_writes_nothing(
    mixed_model, data_dir, tmp_path, case, suffix
):
    data, needle = write_bad(data_dir, tmp_path, case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = predict(mixed_model, data, out_dir / f"scored.{suffix}")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], result.stderr
    assert list(out_dir.iterdir()) == [], "a failed run left files behind"
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "failed"


def test_a_missing_value_in_a_feature_that_allows_none_names_the_row(
    mixed_model, data_dir, tmp_path
):
    table = pacsv.read_csv(data_dir / "mixed.csv")
    ages = table.column("age").to_pylist()
    ages[130] = None
    data = tmp_path / "gap.parquet"
    pq.write_table(table.set_column(0, "age", pa.array(ages, pa.float64())), data)
    result = predict(mixed_model, data, tmp_path / "out.parquet")
    assert result.returncode == 2
    assert "column 'age' is missing at row 130" in result.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_an_existing_output_is_replaced_whole(diabetes_model, data_dir, tmp_path):
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"old")
    result = predict(diabetes_model, data_dir / "diabetes.csv", out)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).num_rows == 442
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.parquet"]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert math.isfinite(summary["duration_seconds"])


def test_a_header_alone_scores_zero_rows(mixed_model, tmp_path):
    data = tmp_path / "header.csv"
    data.write_text("age,income,city,outcome\n")
    result = predict(mixed_model, data, tmp_path / "scored.csv")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows"] == 0
    header = (tmp_path / "scored.csv").read_text().splitlines()
    assert header[0].replace('"', "").split(",")[4] == task_outputs("classification")[0]


def test_a_data_column_named_like_a_prediction_is_refused(diabetes_model, data_dir, tmp_path):
    label = task_outputs("regression")[0]
    table = pacsv.read_csv(data_dir / "diabetes.csv")
    table = table.rename_columns([label if n == "target" else n for n in table.column_names])
    data = tmp_path / "clash.csv"
    pacsv.write_csv(table, data)
    result = predict(diabetes_model, data, tmp_path / "out" / "scored.parquet")
    assert result.returncode == 2
    assert f"column '{label}': the data has it" in result.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_model_and_data_over_http_output_as_file_uri(mixed_model, data_dir, http_root, tmp_path):
    base, root = http_root
    shutil.copytree(mixed_model, root / "model")
    shutil.copy(data_dir / "mixed.csv", root / "mixed.csv")
    out = tmp_path / "scored.parquet"
    result = subprocess.run(
        [str(KUBELOOP), "predict", "--model", f"{base}/model", "--data", f"{base}/mixed.csv",
         "--out", out.as_uri(), "--batch-rows", BATCH_ROWS],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    local = predict(mixed_model, data_dir / "mixed.csv", tmp_path / "local.parquet")
    assert local.returncode == 0, local.stderr
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "local.parquet"))


def test_the_termination_message_carries_rows_and_the_outputs_digest(
    diabetes_model, data_dir, tmp_path
):
    """What a prediction Job's pod reports to the operator: the Job-result contract, written
    to the termination-message file as a kubelet reads it."""
    term = tmp_path / "termination-log"
    out = tmp_path / "out" / "scored.csv"
    sha = hashlib.sha256((diabetes_model / ArtifactLayout.MODEL).read_bytes()).hexdigest()
    result = subprocess.run(
        [str(KUBELOOP), "predict", "--model", str(diabetes_model / ArtifactLayout.MODEL),
         "--data", str(data_dir / "diabetes.csv"), "--out", out.as_uri(), "--sha256", sha],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, TERMINATION_LOG_ENV: str(term)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reported = JobResult.model_validate_json(term.read_text())
    assert reported.kind == "predict"
    assert reported.status == "succeeded"
    assert reported.rows == 442
    assert reported.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert reported.output_uri == out.as_uri()
    assert reported.duration_seconds is not None
    assert reported.duration_seconds >= 0


def test_a_model_that_is_not_the_registered_one_is_refused(diabetes_model, data_dir, tmp_path):
    term = tmp_path / "termination-log"
    result = subprocess.run(
        [str(KUBELOOP), "predict", "--model", str(diabetes_model), "--data",
         str(data_dir / "diabetes.csv"), "--out", str(tmp_path / "scored.csv"),
         "--sha256", "0" * 64],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, TERMINATION_LOG_ENV: str(term)},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    reported = JobResult.model_validate_json(term.read_text())
    assert reported.status == "failed"
    assert f"the model is registered with {'0' * 64}" in str(reported.reason)
    assert not (tmp_path / "scored.csv").exists()
