"""What a routing-ConfigMap watch event means (the pure half of kubewatch)."""

from __future__ import annotations

import json

import pytest

from kubeloop.contracts.routing import RoutingConfig
from kubeloop.serving.kubewatch import Target, backoff, in_cluster_url, routing_of, step


def configmap(routing: str | None, version: str = "7") -> dict:
    data = {} if routing is None else {"routing.json": routing}
    return {"metadata": {"name": "demo-routing", "resourceVersion": version}, "data": data}


GOOD = json.dumps({"canary_url": "http://demo-canary:8080", "weight": 20, "canary_version": 2})


@pytest.mark.parametrize("kind", ["ADDED", "MODIFIED"])
def test_a_change_is_applied_and_resumed_from(kind):
    decided = step({"type": kind, "object": configmap(GOOD, "9")}, "7")
    assert decided.resource_version == "9"
    assert decided.config == RoutingConfig(
        url="http://demo-canary:8080", weight=20, canary_version=2
    )
    assert decided.error is None


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        json.dumps({"canary_url": "http://c:8080", "weight": 250}),
        json.dumps({"canary_url": "ftp://c", "weight": 5}),
        json.dumps([1, 2]),
        None,  # the key is gone
    ],
)
def test_a_malformed_configmap_is_reported_and_changes_nothing(bad):
    decided = step({"type": "MODIFIED", "object": configmap(bad, "10")}, "9")
    assert decided.config is None
    assert decided.error is not None
    assert "keeping the routing" in decided.error
    assert decided.resource_version == "10"  # but the watch goes on past it


def test_bookmarks_and_deletions_only_move_the_resource_version():
    for kind in ("BOOKMARK", "DELETED"):
        decided = step({"type": kind, "object": {"metadata": {"resourceVersion": "12"}}}, "9")
        assert (decided.resource_version, decided.config, decided.error) == ("12", None, None)


def test_an_error_event_asks_for_a_relist():
    gone = {"kind": "Status", "code": 410, "message": "too old resource version"}
    decided = step({"type": "ERROR", "object": gone}, "9")
    assert decided.resource_version is None
    assert "410" in (decided.error or "")


def test_an_empty_value_means_no_canary():
    assert routing_of(configmap("")) == RoutingConfig()


def test_backoff_doubles_and_is_bounded():
    waits = [backoff(n) for n in range(1, 10)]
    assert waits[:4] == [0.2, 0.4, 0.8, 1.6]
    assert max(waits) == 5.0
    assert waits == sorted(waits)


def test_the_watch_asks_for_that_one_configmap():
    target = Target("https://10.0.0.1:443/", "ml", "demo-routing", token_file=None)  # type: ignore[arg-type]
    assert target.path() == "https://10.0.0.1:443/api/v1/namespaces/ml/configmaps"
    assert target.params(None) == {"fieldSelector": "metadata.name=demo-routing"}
    watch = target.params("41")
    assert watch["watch"] == "1"
    assert watch["resourceVersion"] == "41"
    assert watch["fieldSelector"] == "metadata.name=demo-routing"


def test_in_cluster_url_from_the_kubelets_variables():
    assert in_cluster_url({}) is None
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_url(env) == "https://10.96.0.1:443"
    env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
    assert in_cluster_url(env) == "https://[fd00::1]:443"
