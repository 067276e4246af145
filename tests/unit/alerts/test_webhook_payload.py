"""Alertmanager's version-4 webhook payload: what is accepted and why the rest is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from kubeloop.operator.alerts.payload import MAX_ALERTS, PayloadError, parse_payload


def alert(**overrides) -> dict:
    doc = {
        "status": "firing",
        "labels": {
            "alertname": "KubeloopDataDrift",
            "namespace": "ml",
            "model_deployment": "iris",
            "model": "iris",
        },
        "annotations": {"summary": "drift", "value": "0.731"},
        "startsAt": "2024-05-01T10:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": "9f2c1a7be0d4c3aa",
    }
    doc.update(overrides)
    return doc


def payload(**overrides) -> dict:
    doc = {
        "version": "4",
        "groupKey": '{}:{alertname="KubeloopDataDrift"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "kubeloop",
        "groupLabels": {"alertname": "KubeloopDataDrift"},
        "commonLabels": {"alertname": "KubeloopDataDrift"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [alert()],
    }
    doc.update(overrides)
    return doc


def parse(doc) -> object:
    return parse_payload(json.dumps(doc).encode())


def test_a_real_shaped_payload_parses():
    parsed = parse(payload())
    (a,) = parsed.alerts
    assert a.name == "KubeloopDataDrift"
    assert a.deployment == ("ml", "iris")
    assert a.value == "0.731"
    assert a.starts_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def test_unknown_keys_are_ignored():
    assert parse(payload(future="x", alerts=[alert(extra=1)])).alerts


def test_key_is_fingerprint_and_start_time_whatever_the_offset():
    a = parse(payload()).alerts[0]
    b = parse(payload(alerts=[alert(startsAt="2024-05-01T12:00:00.123456+02:00")])).alerts[0]
    assert a.key == b.key == "alert:9f2c1a7be0d4c3aa@2024-05-01T10:00:00.123456Z"
    later = parse(payload(alerts=[alert(startsAt="2024-05-01T11:00:00Z")])).alerts[0]
    assert later.key != a.key


def test_an_alert_without_deployment_labels_names_none():
    labels = {"alertname": "Other", "namespace": "ml"}
    assert parse(payload(alerts=[alert(labels=labels)])).alerts[0].deployment is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "Invalid JSON"),
        (b"{not json", "Invalid JSON"),
        (b"[]", "body: Input should be an object"),
        (json.dumps(payload(version="3")).encode(), "version"),
        (json.dumps(payload(status="pending")).encode(), "status"),
        (json.dumps({k: v for k, v in payload().items() if k != "alerts"}).encode(), "alerts"),
        (json.dumps(payload(alerts=[alert(fingerprint="")])).encode(), "alerts.0.fingerprint"),
        (json.dumps(payload(alerts=[alert(fingerprint="a/b")])).encode(), "fingerprint"),
        (json.dumps(payload(alerts=[alert(startsAt="yesterday")])).encode(), "startsAt"),
        (json.dumps(payload(alerts=[alert(labels={"a": 1})])).encode(), "labels.a"),
        (json.dumps(payload(truncatedAlerts=-1)).encode(), "truncatedAlerts"),
    ],
)
def test_invalid_payloads_say_why(body, reason):
    with pytest.raises(PayloadError, match=reason):
        parse_payload(body)


def test_too_many_alerts_are_refused():
    with pytest.raises(PayloadError, match="alerts"):
        parse(payload(alerts=[alert()] * (MAX_ALERTS + 1)))


def test_many_errors_are_summarised():
    bad = payload(alerts=[alert(fingerprint="", startsAt="x", status="?")] * 3)
    with pytest.raises(PayloadError, match=r"\(\+\d+ more\)"):
        parse(bad)
