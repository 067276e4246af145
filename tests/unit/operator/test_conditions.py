from __future__ import annotations

from kubeloop.operator.conditions import get_condition, is_true, set_condition
from kubeloop.operator.names import child_name, model_version_name


def test_transition_time_kept_when_status_unchanged():
    first = set_condition([], "Ready", "False", "Waiting", "a", 1)
    stamped = [{**first[0], "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    again = set_condition(stamped, "Ready", "False", "StillWaiting", "b", 2)
    assert again[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert again[0]["reason"] == "StillWaiting"
    assert again[0]["observedGeneration"] == 2


def test_transition_time_moves_when_status_changes():
    stamped = [
        {
            "type": "Ready",
            "status": "False",
            "reason": "x",
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        }
    ]
    changed = set_condition(stamped, "Ready", "True", "Done")
    assert changed[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_other_conditions_are_kept_in_a_stable_order():
    conditions = set_condition([], "Verified", "True", "Ok")
    conditions = set_condition(conditions, "Ready", "True", "Ok")
    assert [c["type"] for c in conditions] == ["Ready", "Verified"]
    assert is_true({"conditions": conditions}, "Verified")
    assert get_condition({"conditions": conditions}, "Missing") is None
    assert not is_true(None)


def test_names_are_deterministic_and_dns_safe():
    long = "x" * 80
    name = child_name(long, "train-abcde")
    assert len(name) <= 63
    assert name.endswith("-train-abcde")
    assert model_version_name("iris", 12) == "iris-v12"
