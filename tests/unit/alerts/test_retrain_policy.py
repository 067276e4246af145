"""The retrain policy as a pure function, the TrainingJob it builds, and schedule ticks."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from kubeloop.api.v1alpha1 import ModelDeploymentSpec, TrainingJobSpec
from kubeloop.operator import retrain
from kubeloop.operator.alerts.payload import Alert
from kubeloop.operator.alerts.receiver import watched
from kubeloop.operator.handlers.schedule import due_tick
from kubeloop.operator.names import MAX_NAME

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def md(**status) -> dict:
    doc = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="u-1", generation=1)
    doc["status"] = status
    return doc


def fire(fingerprint: str = "abc123", starts: str = "2024-05-01T11:50:00Z") -> retrain.Trigger:
    alert = Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "KubeloopDataDrift", "namespace": "ml"},
            "annotations": {"value": "0.42"},
            "startsAt": starts,
            "fingerprint": fingerprint,
        }
    )
    return retrain.Trigger.from_alert(alert)


def tj(name: str, phase: str | None = None, model: str = "breast-cancer") -> dict:
    return {"metadata": {"name": name}, "spec": {"modelName": model}, "status": {"phase": phase}}


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_first_alert_creates():
    verdict = retrain.decide(fire(), md(), [], NOW)
    assert verdict.decision == "created"
    assert retrain.training_job_name("breast-cancer", fire()) in verdict.message


def test_unknown_deployment():
    assert retrain.decide(fire(), None, [], NOW).decision == "unknown-deployment"


def test_no_policy_or_disabled_policy_or_broken_spec_is_disabled():
    no_policy = md()
    del no_policy["spec"]["retrain"]
    off = md()
    off["spec"]["retrain"]["enabled"] = False
    broken = md()
    broken["spec"]["replicas"] = -1
    for doc in (no_policy, off, broken):
        assert retrain.decide(fire(), doc, [], NOW).decision == "disabled"


def test_the_same_alert_again_is_a_duplicate_from_status_or_from_the_existing_trainingjob():
    trigger = fire()
    assert retrain.decide(trigger, md(retrainKeys=[trigger.key]), [], NOW).decision == "duplicate"
    twin = tj(retrain.training_job_name("breast-cancer", trigger), "Succeeded")
    assert retrain.decide(trigger, md(), [twin], NOW).decision == "duplicate"


def test_duplicate_wins_over_cooldown_and_max_concurrent():
    trigger = fire()
    doc = md(
        retrainKeys=[trigger.key],
        lastRetrain={"time": ago(1), "trainingJob": "x", "trigger": "alert"},
    )
    assert retrain.decide(trigger, doc, [tj("x", "Running")], NOW).decision == "duplicate"


def test_a_new_episode_of_the_same_alert_is_not_a_duplicate():
    old = fire(starts="2024-05-01T08:00:00Z")
    assert retrain.decide(fire(), md(retrainKeys=[old.key]), [], NOW).decision == "created"


@pytest.mark.parametrize(
    ("phase", "running"),
    [
        (None, True),
        ("Pending", True),
        ("Running", True),
        ("Succeeded", False),
        ("Failed", False),
        ("Rejected", False),
    ],
)
def test_max_concurrent_counts_unfinished_trainingjobs_of_the_model(phase, running):
    verdict = retrain.decide(fire(), md(), [tj("t1", phase)], NOW)
    assert verdict.decision == ("max-concurrent" if running else "created")


def test_max_concurrent_ignores_other_models_and_deleted_ones():
    deleted = tj("t2", "Running")
    deleted["metadata"]["deletionTimestamp"] = ago(1)
    others = [tj("t1", "Running", model="other"), deleted]
    assert retrain.decide(fire(), md(), others, NOW).decision == "created"


def test_max_concurrent_allows_up_to_the_limit():
    doc = md()
    doc["spec"]["retrain"]["maxConcurrent"] = 2
    assert retrain.decide(fire(), doc, [tj("t1", "Running")], NOW).decision == "created"
    verdict = retrain.decide(fire(), doc, [tj("t1", "Running"), tj("t2")], NOW)
    assert verdict.decision == "max-concurrent"
    assert "t1, t2" in verdict.message


@pytest.mark.parametrize(
    ("seconds", "decision"),
    [(0, "cooldown"), (3599, "cooldown"), (3600, "created"), (7200, "created")],
)
def test_cooldown_since_the_last_retrain(seconds, decision):
    doc = md(lastRetrain={"time": ago(seconds), "trainingJob": "x", "trigger": "alert"})
    verdict = retrain.decide(fire(), doc, [tj("x", "Succeeded")], NOW)
    assert verdict.decision == decision
    if decision == "cooldown":
        assert "until" in verdict.message


def claim(trigger: retrain.Trigger | None, seconds: float, name: str = "other-tj") -> dict:
    """A ModelDeployment whose status records a retrain ``seconds`` ago (no cooldown)."""
    doc = md(
        lastRetrain={
            "time": ago(seconds),
            "trainingJob": retrain.training_job_name("breast-cancer", trigger) if trigger else name,
            "trigger": "alert",
        },
        retrainKeys=[trigger.key] if trigger else ["alert:other"],
    )
    doc["spec"]["retrain"]["cooldown"] = "0s"
    return doc


def test_a_claimed_retrain_not_listed_yet_counts_against_max_concurrent():
    """Another replica recorded a retrain and is creating it: a second alert decided now
    must not start a second TrainingJob (maxConcurrent 1), though none is listed yet."""
    verdict = retrain.decide(fire("second"), claim(None, 1), [], NOW)
    assert verdict.decision == "max-concurrent"
    assert "other-tj" in verdict.message
    expired = retrain.CLAIM_SECONDS  # by then it was created, or deleted since
    assert retrain.decide(fire("second"), claim(None, expired), [], NOW).decision == "created"
    done = [tj("other-tj", "Succeeded")]
    assert retrain.decide(fire("second"), claim(None, 1), done, NOW).decision == "created"


def test_a_claim_of_the_same_trigger_is_completed_once():
    """A replica that recorded a retrain and died before creating it: the same alert,
    delivered again, creates it; once it exists (or the claim expired) it is a duplicate."""
    first = fire()
    assert retrain.decide(first, claim(first, 5), [], NOW).decision == "created"
    listed = [tj(retrain.training_job_name("breast-cancer", first), "Pending")]
    assert retrain.decide(first, claim(first, 5), listed, NOW).decision == "duplicate"
    late = claim(first, retrain.CLAIM_SECONDS + 1)
    assert retrain.decide(first, late, [], NOW).decision == "duplicate"


def test_decide_does_not_touch_its_inputs():
    doc, jobs = md(retrainKeys=["k"]), [tj("t1", "Succeeded")]
    before = copy.deepcopy((doc, jobs))
    retrain.decide(fire(), doc, jobs, NOW)
    assert (doc, jobs) == before


def test_names_are_deterministic_distinct_and_dns_labels():
    a, b = fire(), fire(fingerprint="def456")
    assert retrain.training_job_name("iris", a) == retrain.training_job_name("iris", fire())
    assert retrain.training_job_name("iris", a) != retrain.training_job_name("iris", b)
    assert retrain.training_job_name("iris", a) != retrain.training_job_name("wine", a)
    long = retrain.training_job_name("x" * 63, a)
    assert len(long) <= MAX_NAME
    assert re.fullmatch(r"x+-retrain-[0-9a-f]{10}", long)


def test_the_trainingjob_is_the_template_on_fresh_data_linked_to_the_alert():
    doc = md()
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    trigger = fire()
    version = "sha256:" + "a" * 64
    obj = retrain.build_training_job(doc, spec, trigger, version)
    meta = obj["metadata"]
    assert meta["name"] == retrain.training_job_name("breast-cancer", trigger)
    assert meta["namespace"] == "ml"
    assert "ownerReferences" not in meta
    assert meta["labels"][retrain.DEPLOYMENT_LABEL] == "breast-cancer"
    assert meta["labels"][retrain.TRIGGER_LABEL] == "alert"
    assert meta["labels"][retrain.FINGERPRINT_LABEL] == "abc123"
    assert meta["annotations"][retrain.ALERTNAME_ANNOTATION] == "KubeloopDataDrift"
    assert meta["annotations"][retrain.FINGERPRINT_ANNOTATION] == "abc123"
    assert meta["annotations"][retrain.STARTS_AT_ANNOTATION] == "2024-05-01T11:50:00+00:00"
    assert meta["annotations"][retrain.VALUE_ANNOTATION] == "0.42"
    built = TrainingJobSpec.model_validate(obj["spec"])
    # a snapshot newer than the run, not the newest version (test_champion: the other cases)
    assert (built.dataset_ref.fresh, built.dataset_ref.version) == (True, None)
    # the template, plus the champion check every retrain makes unless the template says
    assert built.gate is not None
    assert built.gate.compare_to is not None
    assert built.gate.compare_to.policy == "Serving"
    expected = spec.retrain.template.model_copy(deep=True)
    assert expected.gate is not None
    expected.gate.compare_to = built.gate.compare_to
    assert built.model_copy(update={"dataset_ref": expected.dataset_ref}) == expected
    # the template itself is left alone
    assert spec.retrain.template.dataset_ref.version is None
    assert spec.retrain.template.dataset_ref.fresh is None


def test_without_a_data_version_the_template_is_kept():
    doc = md()
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    obj = retrain.build_training_job(doc, spec, retrain.Trigger.from_tick(NOW), None)
    assert "version" not in obj["spec"]["datasetRef"]
    assert obj["metadata"]["annotations"][retrain.TICK_ANNOTATION] == "2024-05-01T12:00:00Z"
    assert obj["metadata"]["labels"][retrain.TRIGGER_LABEL] == "schedule"


def test_newest_dataset_version():
    v1, v2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert retrain.newest_dataset_version(None) is None
    assert retrain.newest_dataset_version({"status": {}}) is None
    assert (
        retrain.newest_dataset_version({"status": {"version": v2, "history": [{"version": v1}]}})
        == v2
    )
    assert retrain.newest_dataset_version({"status": {"history": [{"version": v1}]}}) == v1


def test_status_patch_keeps_recent_keys_newest_first_and_bounded():
    doc = md(retrainKeys=["k3", "k2", "k1"])
    trigger = fire()
    patch = retrain.status_patch(doc, trigger, "tj-1", NOW, keep=3)
    assert patch["retrainKeys"] == [trigger.key, "k3", "k2"]
    assert patch["lastRetrain"] == {
        "time": "2024-05-01T12:00:00Z",
        "trainingJob": "tj-1",
        "trigger": "alert",
        "fingerprint": "abc123",
    }
    again = retrain.status_patch(md(retrainKeys=patch["retrainKeys"]), trigger, None, NOW, keep=3)
    assert again == {"retrainKeys": patch["retrainKeys"]}


def test_event_reports_the_decision_on_the_deployment():
    event = retrain.build_event(md(), retrain.Verdict("cooldown", "m" * 2000), NOW, "op-0")
    assert event["involvedObject"]["kind"] == "ModelDeployment"
    assert event["involvedObject"]["uid"] == "u-1"
    assert event["reason"] == "RetrainCooldown"
    assert len(event["message"]) == 1024
    assert event["metadata"]["name"].startswith("breast-cancer.")


# ---------------------------------------------------------------- schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "created", "now", "tick"),
    [
        ("0 * * * *", "2024-05-01T09:30:00", "2024-05-01T10:00:00", "2024-05-01T10:00:00"),
        ("0 * * * *", "2024-05-01T09:30:00", "2024-05-01T10:59:59", "2024-05-01T10:00:00"),
        ("0 * * * *", "2024-05-01T09:30:00", "2024-05-01T09:59:59", None),
        ("0 * * * *", "2024-05-01T10:00:00", "2024-05-01T10:30:00", None),
        ("*/5 * * * *", "2024-05-01T09:00:00", "2024-05-01T12:07:03.5", "2024-05-01T12:05:00"),
        ("0 3 * * 1", "2024-04-01T00:00:00", "2024-05-01T12:00:00", "2024-04-29T03:00:00"),
    ],
)
def test_due_tick_is_the_latest_tick_after_creation(schedule, created, now, tick):
    expected = at(tick) if tick else None
    assert due_tick(schedule, at(created), at(now)) == expected


def test_due_tick_refuses_bad_cron():
    with pytest.raises(ValueError, match="cron"):
        due_tick("every hour", NOW - timedelta(days=1), NOW)


def test_a_schedule_tick_is_a_trigger_with_its_own_key():
    tick = retrain.Trigger.from_tick(at("2024-05-01T10:00:00"))
    assert tick.key == "schedule:2024-05-01T10:00:00Z"
    assert retrain.decide(tick, md(retrainKeys=[tick.key]), [], NOW).decision == "duplicate"
    assert retrain.decide(tick, md(), [], NOW).decision == "created"


@pytest.mark.parametrize(
    ("namespace", "patterns", "expected"),
    [
        ("ml", (), True),
        ("ml", ("ml",), True),
        ("ml", ("team-a", "ml"), True),
        ("ml2", ("ml",), False),
        ("team-b", ("team-*",), True),
        ("other", ("team-*",), False),
    ],
)
def test_the_receiver_acts_only_in_watched_namespaces(namespace, patterns, expected):
    assert watched(namespace, patterns) is expected


def test_a_fresh_template_is_left_unpinned_so_the_run_waits_for_a_new_snapshot():
    doc = md()
    doc["spec"]["retrain"]["template"]["datasetRef"]["fresh"] = True
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    trigger = retrain.Trigger.from_tick(NOW)
    obj = retrain.build_training_job(doc, spec, trigger, "sha256:" + "1" * 64)
    assert obj["spec"]["datasetRef"] == {
        "name": spec.retrain.template.dataset_ref.name,
        "fresh": True,
    }
