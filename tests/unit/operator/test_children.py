"""The cache that spares unchanged applies and DELETEs of children known to be gone."""

from __future__ import annotations

from typing import Any

from kubeloop.operator.children import AppliedCache, digest, key_of, version_token


def deployment(replicas: int = 1, generation: int = 1, rv: str = "10") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "md-stable",
            "namespace": "ns",
            "generation": generation,
            "resourceVersion": rv,
        },
        "spec": {"replicas": replicas},
    }


def manifest(replicas: int = 1) -> dict[str, Any]:
    obj = deployment(replicas)
    del obj["metadata"]["generation"], obj["metadata"]["resourceVersion"]
    return obj


def test_an_applied_child_is_not_applied_again_until_someone_changes_it() -> None:
    cache = AppliedCache()
    assert cache.unchanged(manifest()) is None  # never applied: apply
    cache.applied(manifest(), deployment())
    assert cache.unchanged(manifest()) == deployment()
    assert cache.unchanged(manifest(replicas=2)) is None  # a different manifest: apply
    # a status update (same generation) keeps it, and is what a read returns
    ready = {**deployment(rv="11"), "status": {"readyReplicas": 1}}
    assert cache.observe("MODIFIED", ready) is False
    assert cache.unchanged(manifest()) == ready
    # someone scaled it: forgotten, so the next pass applies again
    assert cache.observe("MODIFIED", deployment(replicas=3, generation=2, rv="12")) is True
    assert cache.unchanged(manifest()) is None


def test_children_never_seen_or_deleted_are_known_absent() -> None:
    cache = AppliedCache()
    key = key_of(deployment())
    assert cache.absent(key)  # the watch never saw it
    cache.exists(key)
    assert not cache.absent(key)
    cache.deleted(key)
    assert cache.absent(key)
    assert cache.live(key) == (True, None)
    cache.exists(key)  # created again by someone: the watch saw it
    cache.applied(manifest(), deployment())
    assert cache.observe("DELETED", deployment()) is True
    assert cache.absent(key)
    # kinds the operator does not watch are never assumed absent
    assert not cache.absent(("v1", "Secret", "ns", "token"))


def test_version_token_and_digest() -> None:
    assert version_token(deployment(generation=4)) == "g4"
    cm = {"metadata": {"resourceVersion": "7"}}
    assert version_token(cm) == "r7"
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
