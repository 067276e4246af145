"""The model card: what a reviewer reads before approving a model."""

from __future__ import annotations

from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata, NativeImportance
from kubeloop.contracts.frameworks import BY_NAME, FRAMEWORKS


def render(meta: ModelMetadata, rows: int, test_rows: int) -> str:
    """A Markdown model card for ``meta``."""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in meta.metrics.items())
    importance = "\n".join(f"| {k} | {v:.4f} |" for k, v in list(meta.importance.items())[:15])
    gate = meta.gate
    verdict = "passed" if gate is None or gate.passed else "rejected: " + "; ".join(gate.failures)
    parity = meta.parity
    parity_line = (
        f"{parity.rows} test rows, {parity.label_mismatches} label mismatches, "
        f"max difference {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:g})"
        if parity
        else "not checked"
    )
    classes = f" Classes: {', '.join(map(str, meta.classes))}." if meta.classes else ""
    compared = f"\nChampion comparison: {meta.comparison.message}.\n" if meta.comparison else ""
    declared = BY_NAME.get(meta.lineage.estimator)
    title = {f.name: f.title for f in FRAMEWORKS}[declared.framework] if declared else "unknown"
    scaling = " and scaling" if declared is None or declared.scaled else ""
    return f"""# Model card: {meta.name}

## Intended use
A {meta.task} model predicting `{meta.target}` from {len(meta.inputs)} tabular features,
served over the Open Inference Protocol. Inputs outside the training distribution
(see `{ArtifactLayout.PROFILE}`) are flagged as drift by the serving pods.{classes}

## Data
- Source: `{meta.lineage.data_uri}`
- Content digest: `{meta.lineage.data_digest}`
- {rows} labelled rows; {test_rows} held out for evaluation (seed {meta.lineage.seed})

## Model
- Estimator: `{meta.lineage.estimator}` ({title}) in a pipeline with median imputation{scaling}
  for numeric columns, one-hot encoding for categorical ones
- Exported to ONNX; parity with the fitted pipeline: {parity_line}
- sha256 of `{ArtifactLayout.MODEL}`: `{meta.sha256}`

## Metrics (held-out split)
| metric | value |
|---|---|
{metrics}

Quality gate: {verdict}.
{compared}
## Feature importance (permutation, held-out split)
| feature | mean score drop |
|---|---|
{importance}
{native_section(meta.native_importance, title)}
## Limitations
- Trained on one snapshot of the data; performance on data that drifts away from it is unknown.
- Metrics come from one held-out split, not from a deployment.
- Permutation importance measures what this model uses, not causal effects; correlated
  features share importance.
"""


def native_section(native: NativeImportance | None, title: str) -> str:
    """The library's own importance, when it has one, as a card section."""
    if native is None:
        return ""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in list(native.values.items())[:15])
    return f"""
## Feature importance ({title}: {native.kind}, training split)
| feature | share |
|---|---|
{rows}
"""
