"""The watch-fed record of ModelVersions and Datasets that passes read instead of listing."""

from __future__ import annotations

from typing import Any

from kubeloop.operator.children import Watched


def obj(namespace: str, name: str, version: int = 1) -> dict[str, Any]:
    return {
        "kind": "ModelVersion",
        "metadata": {"namespace": namespace, "name": name, "uid": f"{namespace}/{name}"},
        "spec": {"version": version},
    }


def test_holds_the_latest_of_each_object_by_namespace_until_it_is_deleted() -> None:
    watched = Watched()
    assert not watched.active  # a Context made outside the operator asks the API server
    watched.seen(obj("a", "m-v1"))
    watched.seen(obj("a", "m-v2", version=2))
    watched.seen(obj("b", "m-v1"))
    watched.seen(obj("a", "m-v1", version=7))  # a change replaces what was seen
    assert sorted(o["spec"]["version"] for o in watched.in_namespace("a")) == [2, 7]
    assert watched.named("b", "m-v1") == obj("b", "m-v1")
    watched.gone(obj("a", "m-v1"))
    assert [o["metadata"]["name"] for o in watched.in_namespace("a")] == ["m-v2"]
    assert watched.named("a", "m-v1") is None
    assert watched.in_namespace("nowhere") == []
    watched.gone(obj("nowhere", "x"))  # an unknown deletion is nothing to forget


def test_an_older_state_of_the_same_object_never_replaces_a_newer_one() -> None:
    """A writer records the answer to its patch (resourceVersion 11); the watch may still
    deliver an event from before it (10): the label the patch made must not vanish."""
    watched = Watched()
    patched = {**obj("a", "m-v1"), "metadata": {**obj("a", "m-v1")["metadata"]}}
    patched["metadata"].update(resourceVersion="11", labels={"served-by": "stable"})
    late = obj("a", "m-v1")
    late["metadata"]["resourceVersion"] = "10"
    watched.seen(patched)
    watched.seen(late)
    assert watched.named("a", "m-v1") == patched
    newer = obj("a", "m-v1", version=3)
    newer["metadata"]["resourceVersion"] = "12"
    watched.seen(newer)
    assert watched.named("a", "m-v1") == newer
    recreated = obj("a", "m-v1")  # deleted and made again: another uid, any version
    recreated["metadata"].update(uid="new", resourceVersion="5")
    watched.seen(recreated)
    assert watched.named("a", "m-v1") == recreated
