"""`kubeloop snapshot` as a real process."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def test_snapshot_writes_copy_profile_and_summary(kubeloop, data, tmp_path):
    result = kubeloop(
        "snapshot",
        "--source",
        str(data / "cancer.csv"),
        "--format",
        "csv",
        "--out",
        str(tmp_path / "snaps"),
    )
    assert result.code == 0, result.stderr
    summary = result.summary
    assert summary["status"] == "succeeded"
    assert summary["digest"].startswith("sha256:")
    assert summary["rows"] == 569
    assert [c["name"] for c in summary["columns"]][-1] == "target"
    assert json.loads(result.termination) == summary
    folder = tmp_path / "snaps" / summary["digest"].removeprefix("sha256:")
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "profile.json"]
    assert summary["snapshot_uri"].endswith("data.csv")
    profile = json.loads((folder / "profile.json").read_text())
    radius = profile["features"]["mean radius"]
    assert radius["kind"] == "numeric"
    assert len(radius["edges"]) == len(radius["counts"]) + 1
    assert sum(radius["counts"]) == 569
    assert pd.read_csv(folder / "data.csv").shape == (569, 6)


def test_digest_ignores_layout_but_not_content(kubeloop, data, tmp_path):
    def digest(path: Path, fmt: str) -> str:
        result = kubeloop(
            "snapshot", "--source", str(path), "--format", fmt, "--out", str(tmp_path / "s")
        )
        assert result.code == 0, result.stderr
        return str(result.summary["digest"])

    csv = digest(data / "cancer.csv", "csv")
    assert digest(data / "cancer.parquet", "parquet") == csv
    assert digest(data / "cancer.jsonl", "jsonl") == csv  # columns in another order too
    changed = pd.read_csv(data / "cancer.csv")
    changed.loc[100, "mean area"] += 1
    changed.to_csv(tmp_path / "changed.csv", index=False)
    assert digest(tmp_path / "changed.csv", "csv") != csv


def schema(tmp_path: Path, columns: list[dict], **extra) -> str:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"columns": columns, **extra}))
    return str(path)


def test_bad_data_fails_with_one_clear_line_and_no_snapshot(kubeloop, data, tmp_path):
    nulls = pd.read_csv(data / "cancer.csv")
    nulls.loc[:99, "mean area"] = None
    nulls.to_csv(tmp_path / "nulls.csv", index=False)
    words = pd.read_csv(data / "cancer.csv").astype({"mean texture": object})
    words.loc[5, "mean texture"] = "lots"
    words.to_csv(tmp_path / "words.csv", index=False)
    (tmp_path / "empty.csv").write_text("a,b\n")
    cases = [
        (
            data / "cancer.csv",
            [{"name": "size", "type": "number"}],
            {},
            "column 'size': missing from the data",
        ),
        (
            tmp_path / "words.csv",
            [{"name": "mean texture", "type": "number"}],
            {},
            "column 'mean texture': expected number, found 'lots'",
        ),
        (
            data / "cancer.csv",
            [{"name": "mean radius", "type": "integer"}],
            {},
            "column 'mean radius': expected integer",
        ),
        (
            tmp_path / "nulls.csv",
            [{"name": "mean area", "type": "number"}],
            {},
            "column 'mean area': 100 missing values, but it is not nullable",
        ),
        (
            tmp_path / "nulls.csv",
            [{"name": "mean area", "type": "number", "nullable": True}],
            {"maxNullFraction": 0.1},
            "column 'mean area': 17.6% missing values",
        ),
        (tmp_path / "empty.csv", [{"name": "a", "type": "number"}], {}, "the data set is empty"),
    ]
    for source, columns, extra, message in cases:
        out = tmp_path / "never"
        result = kubeloop(
            "snapshot",
            "--source",
            str(source),
            "--format",
            "csv",
            "--out",
            str(out),
            "--schema",
            schema(tmp_path, columns, **extra),
        )
        assert result.code == 2, (message, result.stderr)
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.summary == {
            "kind": "snapshot",
            "status": "failed",
            "reason": result.summary["reason"],
        }
        assert message in json.loads(result.termination)["reason"]
        assert not out.exists()


def test_unreadable_source_and_bad_schema_file(kubeloop, tmp_path):
    result = kubeloop(
        "snapshot",
        "--source",
        str(tmp_path / "nope.csv"),
        "--format",
        "csv",
        "--out",
        str(tmp_path),
    )
    assert result.code == 2
    assert "no such file" in result.stderr
    bad = tmp_path / "schema.json"
    bad.write_text('{"columns": [{"name": "a", "type": "complex"}]}')
    result = kubeloop(
        "snapshot",
        "--source",
        str(bad),
        "--format",
        "csv",
        "--out",
        str(tmp_path),
        "--schema",
        str(bad),
    )
    assert result.code == 2
    assert "columns.0.type" in result.stderr
