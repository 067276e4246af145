"""The fresh-data deciders: which version a run trains on, and which snapshot a Dataset owes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kubeloop.api.v1alpha1 import DatasetRef
from kubeloop.operator.freshdata import (
    REQUEST_ANNOTATION,
    Fail,
    Use,
    Wait,
    dataset_version_for,
    merged_request,
    pending_request,
    request_suffix,
    snapshot_outcome,
)

T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
FRESH = DatasetRef(name="d", fresh=True)


def ready(version: str = OLD, message: str = "10 rows", ok: bool = True) -> dict[str, Any]:
    cond = {"type": "Ready", "status": "True" if ok else "False", "message": message}
    return {"version": version, "conditions": [cond]}


def served(request: datetime, digest: str | None, previous: str = OLD) -> dict[str, Any]:
    status = ready(digest or previous, "unreachable" if digest is None else "ok")
    status["lastSnapshot"] = snapshot_outcome(request, previous, digest, "Job failed", "t")
    return status


def decide(ref: DatasetRef, status: dict[str, Any], after: float = 1, chosen: str | None = None):
    return dataset_version_for(ref, chosen, T0, status, T0 + timedelta(seconds=after))


def test_pinned_and_chosen_versions_win_without_asking() -> None:
    assert decide(DatasetRef(name="d", version=NEW), {}) == Use(NEW)
    assert decide(FRESH, {}, chosen=OLD) == Use(OLD)


def test_without_fresh_the_current_version_is_used_once_ready() -> None:
    assert decide(DatasetRef(name="d"), ready()) == Use(OLD)
    waiting = decide(DatasetRef(name="d"), ready(ok=False))
    assert isinstance(waiting, Wait)
    assert waiting.reason == "DatasetNotReady"
    assert waiting.request is None


def test_fresh_waits_and_requests_a_snapshot_newer_than_the_run() -> None:
    decision = decide(FRESH, ready())
    assert isinstance(decision, Wait)
    assert decision.reason == "WaitingForSnapshot"
    assert decision.request == T0
    assert "Dataset d" in decision.message
    # A snapshot that served an older request does not count.
    assert isinstance(decide(FRESH, served(T0 - timedelta(seconds=1), NEW)), Wait)


def test_fresh_uses_the_served_snapshot_changed_or_not() -> None:
    changed = decide(FRESH, served(T0, NEW))
    assert isinstance(changed, Use)
    assert changed.version == NEW
    assert "new version" in changed.message
    same = decide(FRESH, served(T0 + timedelta(seconds=5), OLD))
    assert isinstance(same, Use)
    assert same.version == OLD
    assert "unchanged" in same.message


def test_a_failed_snapshot_fails_the_run_naming_the_dataset_and_why() -> None:
    decision = decide(FRESH, served(T0, None))
    assert isinstance(decision, Fail)
    assert decision.reason == "SnapshotFailed"
    assert "Dataset d" in decision.message
    assert "unreachable" in decision.message


def test_no_snapshot_within_the_timeout_fails_the_run() -> None:
    ref = DatasetRef(name="d", fresh=True, fresh_timeout="10m")
    assert isinstance(decide(ref, ready(), after=599), Wait)
    decision = decide(ref, ready(), after=601)
    assert isinstance(decision, Fail)
    assert decision.reason == "SnapshotTimeout"
    assert "10m" in decision.message


def test_requests_only_move_forward() -> None:
    assert merged_request(None, T0) == T0
    assert merged_request("2026-12-03T09:00:00Z", T0) == T0
    assert merged_request("2026-12-03T10:00:00Z", T0) is None
    assert merged_request("2026-12-03T11:00:00Z", T0) is None


def test_a_request_is_pending_until_a_snapshot_started_for_it() -> None:
    annotations = {REQUEST_ANNOTATION: "2026-12-03T10:00:00Z"}
    assert pending_request({}, {}) is None
    assert pending_request(annotations, {}) == T0
    assert pending_request(annotations, {"snapshotRequest": "2026-12-03T09:59:59Z"}) == T0
    assert pending_request(annotations, {"snapshotRequest": "2026-12-03T10:00:00Z"}) is None


def test_the_same_request_names_the_same_job() -> None:
    assert request_suffix(T0) == request_suffix(T0.astimezone(UTC))
    assert request_suffix(T0) != request_suffix(T0 + timedelta(seconds=1))


def test_the_outcome_says_whether_the_digest_changed() -> None:
    out = snapshot_outcome(T0, OLD, OLD, "", "now")
    assert out == {
        "time": "now",
        "succeeded": True,
        "request": "2026-12-03T10:00:00Z",
        "digest": OLD,
        "changed": False,
    }
    assert snapshot_outcome(None, OLD, NEW, "", "now")["changed"] is True
    failed = snapshot_outcome(T0, OLD, None, "source unreachable", "now")
    assert failed["succeeded"] is False
    assert failed["message"] == "source unreachable"


def test_the_timeout_defaults_to_thirty_minutes() -> None:
    assert isinstance(decide(FRESH, ready(), after=1799), Wait)
    assert isinstance(decide(FRESH, ready(), after=1801), Fail)


def test_a_plain_reference_stays_as_written_on_the_wire() -> None:
    assert DatasetRef(name="d").to_wire() == {"name": "d"}
