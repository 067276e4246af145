"""The child kinds' watches are filtered by the API server, not in the operator."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource

from kubeloop.operator.app import watch_own_children_only
from kubeloop.operator.children import WATCHED


def test_every_child_kind_is_watched_with_the_operators_label_and_nothing_else_is():
    settings = kopf.OperatorSettings()
    watch_own_children_only(settings)
    for group, version, plural, *_ in WATCHED:
        found = list(settings.watching.label_selectors.collect(Resource(group, version, plural)))
        assert found == ["app.kubernetes.io/managed-by=kubeloop"], plural
    for own in ("datasets", "trainingjobs", "modelversions", "modeldeployments"):
        assert not list(
            settings.watching.label_selectors.collect(Resource("kubeloop.io", "v1alpha1", own))
        )
    assert not list(settings.watching.label_selectors.collect(Resource("", "v1", "pods")))
