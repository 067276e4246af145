"""Every manifest in examples/ parses through the typed models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeloop.api.v1alpha1 import KINDS

ROOT = Path(__file__).resolve().parents[3]
BY_KIND = {r.info.kind: r for r in KINDS}
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def kubeloop_docs(path: Path) -> list[dict]:
    """The Kubeloop objects of an example (a Secret it needs may come with them)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    return [d for d in docs if d["apiVersion"].startswith("kubeloop.io/")]


def test_there_is_one_example_per_kind():
    kinds = {d["kind"] for p in EXAMPLES for d in kubeloop_docs(p)}
    assert kinds >= set(BY_KIND)


def contains(wire: object, written: object) -> bool:
    """Whether everything the example writes survives parsing (defaults may be added)."""
    if isinstance(written, dict):
        return isinstance(wire, dict) and all(
            k in wire and contains(wire[k], v) for k, v in written.items()
        )
    if isinstance(written, list):
        return (
            isinstance(wire, list)
            and len(wire) == len(written)
            and all(contains(a, b) for a, b in zip(wire, written, strict=True))
        )
    return bool(wire == written)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path):
    for doc in kubeloop_docs(path):
        resource = BY_KIND[doc["kind"]].model_validate(doc)
        assert resource.metadata.name
        assert contains(resource.spec.to_wire(), doc["spec"])


def test_a_broken_example_is_rejected():
    doc = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    doc["spec"]["split"]["testFraction"] = 1.5
    with pytest.raises(ValueError, match="testFraction"):
        BY_KIND["TrainingJob"].model_validate(doc)


def test_the_postgresql_example_brings_the_secret_it_names():
    docs = list(yaml.safe_load_all((ROOT / "examples" / "dataset-postgresql.yaml").read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    ref = next(d for d in docs if d["kind"] == "Dataset")["spec"]["source"]["sql"]["urlSecretRef"]
    assert secret["metadata"]["name"] == ref["name"]
    assert secret["stringData"][ref["key"]].startswith("postgresql://")


def test_the_s3_example_brings_the_secret_it_names_with_standard_keys():
    from kubeloop.contracts.storage import CREDENTIAL_KEYS

    docs = list(yaml.safe_load_all((ROOT / "examples" / "dataset-s3.yaml").read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    source = next(d for d in docs if d["kind"] == "Dataset")["spec"]["source"]
    assert secret["metadata"]["name"] == source["secretRef"]["name"]
    assert set(secret["stringData"]) <= set(CREDENTIAL_KEYS)
    assert source["uri"].startswith("s3://")
