"""The pure parts of feedback forwarding: peers, the headers passed on, merged answers."""

from __future__ import annotations

import pytest

from kubeloop.serving.peers import FORWARDED_HEADER, merge, parse_peers, passed_on


def test_peers_are_host_port_pairs():
    assert parse_peers("md-pods.ns.svc:8080") == [("md-pods.ns.svc", 8080)]
    assert parse_peers("a:1, b:2") == [("a", 1), ("b", 2)]
    for bad in ("md-pods", ":8080", "a:0", "a:70000", "a:http", "a:1,"):
        with pytest.raises(ValueError, match="expected host:port"):
            parse_peers(bad)


def test_only_the_credentials_and_the_marker_are_passed_on():
    headers = {b"authorization": b"Bearer t", b"x-kubeloop-token": b"t", b"cookie": b"c"}
    assert passed_on(headers) == {
        "authorization": "Bearer t",
        "x-kubeloop-token": "t",
        FORWARDED_HEADER: "1",
    }
    assert passed_on({}) == {FORWARDED_HEADER: "1"}


def test_answers_merge_into_the_ids_any_pod_knew():
    merged = merge(
        [
            {"matched": 2, "matched_ids": ["a", "b"]},
            None,  # a pod that did not answer
            {"matched": 1, "matched_ids": ["b"]},  # a shadow pod scores its copy too
        ]
    )
    assert merged.matched_ids == {"a", "b"}
    assert (merged.matched_rows, merged.peers, merged.failed) == (3, 3, 1)
