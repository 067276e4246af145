"""`kubeloop train --max-rows`: a seeded per-class sample of the data, the same training
rows (profile, metrics) for the same seed, the lineage still naming the whole data's version."""

from __future__ import annotations

import hashlib

import pandas as pd
from train_helpers import flags

from kubeloop.contracts.artifacts import ArtifactLayout


def test_a_sample_trains_the_same_model_for_the_same_seed(kubeloop, snapshot, data, tmp_path):
    whole = pd.read_csv(data / "cancer.csv")
    runs = {}
    for key, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / key
        result = kubeloop(*flags(data, out, "--max-rows", "200", "--sample-seed", seed))
        assert result.code == 0, result.stderr
        card = (out / ArtifactLayout.CARD).read_text()
        profile = (out / ArtifactLayout.PROFILE).read_bytes()  # the training rows' profile
        runs[key] = (hashlib.sha256(profile).hexdigest(), card, result.summary)
    assert runs["a"][0] == runs["b"][0]
    assert runs["a"][2]["metrics"] == runs["b"][2]["metrics"]
    assert runs["a"][0] != runs["c"][0]
    assert "- 200 labelled rows; 40 held out" in runs["a"][1]
    assert len(whole) > 500
    snap = snapshot(data / "cancer.csv", "csv", tmp_path / "snaps")
    assert f"`{snap.summary['digest']}`" in runs["a"][1]  # the lineage names the whole data
