"""Alertmanager's webhook payload, version 4, as typed models.

https://prometheus.io/docs/alerting/latest/configuration/#webhook_config documents
the shape. Unknown keys are ignored (Alertmanager may add some), missing or
mistyped ones are refused with a reason the receiver returns as a 400.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubeloop.operator.alerts.rules import DEPLOYMENT_LABEL, NAMESPACE_LABEL, VALUE_ANNOTATION

#: Most alerts one payload may carry (Alertmanager's max_alerts is 0 = all by default).
MAX_ALERTS = 1000


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Alert(_Model):
    """One alert of a notification."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-zA-Z]+$")

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def deployment(self) -> tuple[str, str] | None:
        """(namespace, ModelDeployment name) from the labels, when both are there."""
        namespace = self.labels.get(NAMESPACE_LABEL)
        name = self.labels.get(DEPLOYMENT_LABEL)
        return (namespace, name) if namespace and name else None

    @property
    def value(self) -> str | None:
        """The value the rule put in its ``value`` annotation, if any."""
        return self.annotations.get(VALUE_ANNOTATION)

    @property
    def key(self) -> str:
        """Identity of one firing episode: the same alert re-delivered has the same key."""
        starts = self.starts_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"alert:{self.fingerprint}@{starts}"


class WebhookPayload(_Model):
    """One notification: a group of alerts."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_key: str = Field("", alias="groupKey")
    truncated_alerts: int = Field(0, ge=0, alias="truncatedAlerts")
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


class PayloadError(ValueError):
    """The body is not a valid version-4 webhook payload; ``str()`` says why."""


def parse_payload(body: bytes) -> WebhookPayload:
    """The payload, or :class:`PayloadError` with a one-line reason."""
    try:
        return WebhookPayload.model_validate_json(body)
    except ValidationError as exc:
        reasons = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error["loc"]) or "body"
            reasons.append(f"{where}: {error['msg']}")
        more = exc.error_count() - len(reasons)
        raise PayloadError("; ".join(reasons) + (f" (+{more} more)" if more > 0 else "")) from exc
