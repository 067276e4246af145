"""`kubeloop snapshot` as a real process."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kubeloop.contracts.artifacts import ArtifactLayout


def test_snapshot_writes_copy_profile_and_summary(snapshot, data, tmp_path):
    result = snapshot(data / "cancer.csv", "csv", tmp_path / "snaps")
    assert result.code == 0, result.stderr
    summary = result.summary
    assert summary["status"] == "succeeded"
    assert summary["digest"].startswith("sha256-v2:")
    assert summary["rows"] == 569
    assert [c["name"] for c in summary["columns"]][-1] == "target"
    assert json.loads(result.termination) == summary
    folder = Path(ArtifactLayout.snapshot_dir(str(tmp_path / "snaps"), summary["digest"]))
    copy = ArtifactLayout.data_file("csv")
    assert sorted(p.name for p in folder.iterdir()) == [copy, ArtifactLayout.PROFILE]
    assert summary["snapshot_uri"].endswith(copy)
    profile = json.loads((folder / ArtifactLayout.PROFILE).read_text())
    radius = profile["features"]["mean radius"]
    assert radius["kind"] == "numeric"
    assert len(radius["edges"]) == len(radius["counts"]) + 1
    assert sum(radius["counts"]) == 569
    assert pd.read_csv(folder / copy).shape == (569, 6)


def test_digest_ignores_layout_but_not_content(snapshot, data, tmp_path):
    def digest(path: Path, fmt: str) -> str:
        result = snapshot(path, fmt, tmp_path / "s")
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


@pytest.fixture(scope="module")
def bad_data(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cancer data as it is, with 100 missing areas, with a word among the textures, and
    a file of headers only."""
    root = tmp_path_factory.mktemp("bad")
    nulls = pd.read_csv(data / "cancer.csv")
    nulls.loc[:99, "mean area"] = None
    nulls.to_csv(root / "nulls.csv", index=False)
    words = pd.read_csv(data / "cancer.csv").astype({"mean texture": object})
    words.loc[5, "mean texture"] = "lots"
    words.to_csv(root / "words.csv", index=False)
    (root / "empty.csv").write_text("a,b\n")
    return {"cancer": data / "cancer.csv", **{p.stem: p for p in root.iterdir()}}


@pytest.mark.parametrize(
    ("source", "column", "extra", "message"),
    [
        pytest.param(
            "cancer",
            {"name": "size", "type": "number"},
            {},
            "column 'size': missing from the data",
            id="missing-column",
        ),
        pytest.param(
            "words",
            {"name": "mean texture", "type": "number"},
            {},
            "column 'mean texture': expected number, found 'lots'",
            id="word-for-number",
        ),
        pytest.param(
            "cancer",
            {"name": "mean radius", "type": "integer"},
            {},
            "column 'mean radius': expected integer",
            id="fraction-for-integer",
        ),
        pytest.param(
            "nulls",
            {"name": "mean area", "type": "number"},
            {},
            "column 'mean area': 100 missing values, but it is not nullable",
            id="missing-not-nullable",
        ),
        pytest.param(
            "nulls",
            {"name": "mean area", "type": "number", "nullable": True},
            {"maxNullFraction": 0.1},
            "column 'mean area': 17.6% missing values",
            id="too-many-missing",
        ),
        pytest.param(
            "empty", {"name": "a", "type": "number"}, {}, "the data set is empty", id="empty"
        ),
    ],
)
def test_bad_data_fails_with_one_clear_line_and_no_snapshot(
    snapshot, bad_data, tmp_path, source, column, extra, message
):
    out = tmp_path / "never"
    result = snapshot(bad_data[source], "csv", out, "--schema", schema(tmp_path, [column], **extra))
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


def test_unreadable_source_and_bad_schema_file(snapshot, tmp_path):
    result = snapshot(tmp_path / "nope.csv", "csv", tmp_path)
    assert result.code == 2
    assert "no such file" in result.stderr
    bad = tmp_path / "schema.json"
    bad.write_text('{"columns": [{"name": "a", "type": "complex"}]}')
    result = snapshot(bad, "csv", tmp_path, "--schema", str(bad))
    assert result.code == 2
    assert "columns.0.type" in result.stderr
