"""docs/rollouts.md shows the canary-analysis example exactly as examples/ has it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_worked_example_in_the_docs_is_the_example_file():
    doc = (ROOT / "docs" / "rollouts.md").read_text()
    example = (ROOT / "examples" / "modeldeployment-canary-analysis.yaml").read_text()
    start = doc.index("```yaml\n") + len("```yaml\n")
    assert doc[start : doc.index("```", start)] == example
