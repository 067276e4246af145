"""The operator's kopf peering priority."""

from __future__ import annotations

import click
import pytest

from kubeloop.operator.app import peering_priority


def test_integer_priorities_pass_through() -> None:
    assert peering_priority("0", "pod-a") == 0
    assert peering_priority("-5", "pod-a") == -5
    assert peering_priority("100", "pod-a") == 100


def test_auto_is_stable_per_identity_and_differs_between_replicas() -> None:
    names = [f"kubeloop-operator-7d9f8b6c5-{suffix}" for suffix in ("x2k9p", "b7qzr", "m4n8t")]
    priorities = [peering_priority("auto", name) for name in names]
    assert priorities == [peering_priority("auto", name) for name in names]
    assert len(set(priorities)) == len(priorities)
    # a developer's operator run with --priority above 1000000 pauses every replica
    assert all(1 <= p <= 1_000_000 for p in priorities)


def test_anything_else_is_a_usage_error() -> None:
    with pytest.raises(click.BadParameter, match="neither an integer nor 'auto'"):
        peering_priority("high", "pod-a")
