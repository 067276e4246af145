"""Prediction log lines and the never-blocking queue."""

from __future__ import annotations

import json

import numpy as np

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT
from kubeloop.serving.predlog import Entry, PredictionLog, lines


def entry(rows: int = 2, inputs: bool = True) -> Entry:
    return Entry(
        request_id="r",
        model="m",
        version="3",
        time=0.0,
        latency_s=0.0015,
        outputs={
            LABEL_OUTPUT: np.arange(rows, dtype=np.int64),
            PROBA_OUTPUT: np.full((rows, 2), 0.5, dtype=np.float32),
        },
        inputs={"city": np.array(["a"] * rows, dtype=object)} if inputs else None,
        variant="stable",
    )


def test_one_line_per_row_with_plain_json_values():
    out = [json.loads(line) for line in lines(entry())]
    assert [o["id"] for o in out] == ["r/0", "r/1"]
    assert out[1]["outputs"] == {LABEL_OUTPUT: 1, PROBA_OUTPUT: [0.5, 0.5]}
    assert out[0]["inputs"] == {"city": "a"}
    assert out[0]["time"] == "1970-01-01T00:00:00Z"
    assert out[0]["latency_ms"] == 1.5
    single = json.loads(lines(entry(1, inputs=False))[0])
    assert single["id"] == "r"
    assert "inputs" not in single


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    written: list[int] = []
    dropped: list[int] = []
    log = PredictionLog(str(tmp_path / "p.jsonl"), 1, written.append, dropped.append)
    # not started: nothing drains, so the second and third entries find the queue full
    for _ in range(3):
        log.submit(entry())
    assert dropped == [2, 2]
    log.start()
    log.close()
    assert sum(written) == 2
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
