"""The serving benchmark's pure parts: the bodies it sends and the tables it prints
(the benchmark itself runs with ``make bench-serving``, not in the suite)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from kubeloop.serving.rest.v2 import decode_feedback

RUN = Path(__file__).resolve().parents[2] / "bench" / "serving" / "run.py"
spec = importlib.util.spec_from_file_location("bench_serving_run", RUN)
assert spec is not None
assert spec.loader is not None
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run  # dataclasses look their module up by name
spec.loader.exec_module(run)


def test_the_feedback_flood_body_is_exactly_the_largest_and_valid(tmp_path):
    bodies = run.write_bodies(tmp_path, [1.0] * 30)
    raw = bodies["feedback"].read_bytes()
    assert len(raw) == run.FEEDBACK_BYTES == 1024 * 1024
    entries = decode_feedback(raw)
    assert len(entries) > 25_000
    assert json.loads(bodies["v1"].read_bytes()) == {"instances": [[1.0] * 30]}
    assert json.loads(bodies["v2"].read_bytes())["inputs"][0]["shape"] == [1, 30]


def test_the_tables_put_each_server_beside_the_ceiling_and_the_peers():
    cell = run.Cell
    results = {
        ("logreg", "v2", "ceiling", 32): cell(4.0, 10.0, 4000.0, 0),
        ("logreg", "v2", "kubeloop-full", 32): cell(3.0, 8.0, 6000.0, 0),
        ("logreg", "v2", "mlserver", 32): cell(40.0, 90.0, 600.0, 0),
        ("logreg", "v2", "kserve", 32): cell(30.0, 80.0, 1000.0, 0),
        ("logreg", "v2", "flood", 32): cell(5.0, 24.0, 3000.0, 0),
        ("logreg", "v2", "feedback", 32): cell(50.0, 90.0, 20.0, 0),
    }
    text = run.table(results)
    row = "| logreg | v2 | 32 | kubeloop-full | 3.000 | 8.000 | 6,000 | 1.50x | 0.75x "
    assert row + "| 10.0x | 6.0x |" in text
    assert "| logreg | v2 | 32 | 8.000 | 24.000 | 3.00x | 3,000 | 20.0 | 0 |" in text
    assert "req/s at 32 connections 1.50x the ceiling (goal >= 1.0x): met" in text
    assert "feedback flood 3.00x (goal <= 2.0x): NOT met" in text
