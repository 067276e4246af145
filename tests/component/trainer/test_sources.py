"""Where data comes from and how it is stored: http(s) and file:// URIs, JSON lines, the
immutability of a snapshot folder, and stored copies that keep the digest of their source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kubeloop.contracts.artifacts import ArtifactLayout


def test_http_and_file_uris(kubeloop, snapshot, data, http_root, tmp_path):
    base, root = http_root
    (root / "cancer.csv").write_bytes((data / "cancer.csv").read_bytes())
    local = snapshot(str(data / "cancer.csv"), "csv", tmp_path / "a")
    remote = snapshot(f"{base}/cancer.csv", "csv", f"file://{tmp_path / 'b'}")
    assert local.code == remote.code == 0, (local.stderr, remote.stderr)
    assert remote.summary["digest"] == local.summary["digest"]
    assert remote.summary["snapshot_uri"].startswith("file://")
    stored = Path(remote.summary["snapshot_uri"].removeprefix("file://"))
    assert stored.is_file()

    # "?" starts a query string, not a glob: an http(s) URL is always one file
    query = snapshot(f"{base}/cancer.csv?v=1", "csv", tmp_path / "q")
    assert query.code == 0, query.stderr
    assert query.summary["digest"] == local.summary["digest"]

    missing = snapshot(f"{base}/nope.csv", "csv", tmp_path / "c")
    assert missing.code == 2
    assert f"{base}/nope.csv" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()

    out = tmp_path / "model"
    trained = kubeloop(
        "train",
        "--data",
        f"{base}/cancer.csv",
        "--target",
        "target",
        "--task",
        "classification",
        "--estimator",
        "GaussianNB",
        "--out",
        f"file://{out}",
    )
    assert trained.code == 0, trained.stderr
    assert trained.summary["artifact_uri"] == f"file://{out}/{ArtifactLayout.MODEL}"
    meta = json.loads((out / ArtifactLayout.METADATA).read_text())
    assert meta["lineage"]["data_digest"] == local.summary["digest"]


def test_snapshot_folder_is_written_once(snapshot, data, tmp_path):
    out = tmp_path / "snaps"
    first = snapshot(str(data / "cancer.csv"), "csv", out)
    assert first.code == 0, first.stderr
    folder = Path(ArtifactLayout.snapshot_dir(str(out), first.summary["digest"]))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    again = snapshot(str(data / "cancer.csv"), "csv", out)
    assert again.code == 0, again.stderr
    assert again.summary == first.summary
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert after == before
    # Nothing half-written is left beside it.
    assert [p.name for p in out.iterdir()] == [folder.name]
    # The stored copy re-reads to the same digest.
    copy = snapshot(first.summary["snapshot_uri"], "csv", tmp_path / "again")
    assert copy.code == 0, copy.stderr
    assert copy.summary["digest"] == first.summary["digest"]


def test_json_lines_keep_their_values_and_types(snapshot, tmp_path):
    """JSON lines are read as the JSON says: no date guessing from column names, full float
    precision; the stored copy has the digest of its source."""
    rng = np.random.default_rng(3)
    n = 50
    frame = pd.DataFrame(
        {
            "created_at": np.arange(1_600_000_000, 1_600_000_000 + n),  # a number, not a date
            "date": [f"2024-01-{1 + i % 28:02d}" for i in range(n)],  # text, kept as written
            "value": rng.normal(size=n) * 1e-3,  # needs all 17 significant digits
            "label": rng.choice(["a", "b"], n),
        }
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    with (tmp_path / "t.jsonl").open("w") as handle:
        for record in frame.to_dict("records"):
            handle.write(
                json.dumps({k: v.item() if hasattr(v, "item") else v for k, v in record.items()})
                + "\n"
            )
    csv = snapshot(str(tmp_path / "t.csv"), "csv", tmp_path / "s")
    jsonl = snapshot(str(tmp_path / "t.jsonl"), "jsonl", tmp_path / "s")
    assert csv.code == jsonl.code == 0, (csv.stderr, jsonl.stderr)
    assert jsonl.summary["digest"] == csv.summary["digest"]
    types = {c["name"]: c["type"] for c in jsonl.summary["columns"]}
    assert types == {
        "created_at": "integer",
        "date": "string",
        "value": "number",
        "label": "string",
    }

    stored = jsonl.summary["snapshot_uri"]
    again = snapshot(stored, "jsonl", tmp_path / "s2")
    assert again.code == 0, again.stderr
    assert again.summary["digest"] == jsonl.summary["digest"]


def test_an_output_nothing_can_write_to_fails_before_any_work(kubeloop, data):
    source = str(data / "cancer.csv")
    snapshot = ["snapshot", "--source", source, "--format", "csv"]
    train = [
        *("train", "--data", source, "--target", "target", "--task", "classification"),
        *("--estimator", "GaussianNB"),
    ]
    for args in (snapshot, train):
        result = kubeloop(*args, "--out", "nope://bucket/models")
        assert result.code == 2, result.stderr
        message = "error: --out nope://bucket/models: Protocol not known: nope"
        assert result.stderr.strip() == message
        assert result.summary["status"] == "failed"
