"""Operator settings, read once at start-up from ``KUBELOOP_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """What the operator needs to know about its cluster and images.

    Artifacts (dataset snapshots, models) live under ``artifact_root``. When it is
    a ``file://`` URI on a shared volume, ``volume_claim`` names the
    PersistentVolumeClaim mounted at ``volume_mount_path`` in every pod the
    operator creates (and in the operator, so it can verify digests).
    """

    model_config = SettingsConfigDict(env_prefix="KUBELOOP_", extra="ignore")

    trainer_image: str = Field(
        "kubeloop-trainer:0.1.0", description="Image of snapshot/train Jobs."
    )
    serving_image: str = Field("kubeloop-serving:0.1.0", description="Image of serving pods.")
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy of those images.")
    artifact_root: str = Field(
        "file:///data/kubeloop", description="Root URI of snapshots and models."
    )
    artifacts_secret: str | None = Field(
        None,
        description="Secret with the artifact store's credentials (standard keys, see "
        "kubeloop.contracts.storage), given to every Job and serving pod as secretKeyRef "
        "variables; the operator never reads it. Unset: the pods' ambient identity. It must "
        "exist in every namespace the Jobs and pods run in.",
    )
    volume_claim: str | None = Field(None, description="PVC holding the data and artifacts.")
    volume_mount_path: str = Field("/data", description="Where that PVC is mounted.")
    service_account: str | None = Field(
        None, description="ServiceAccount of the Jobs and serving pods (default: namespace's)."
    )
    follow_routing: bool = Field(
        True,
        description="Give each ModelDeployment's stable pods a ServiceAccount of their own "
        "whose token may only get/list/watch their routing ConfigMap, and have them follow it "
        "through the API (a weight change arrives in about a second). Off: they read the "
        "mounted file alone, at the kubelet's sync period (1 min by default).",
    )
    router_account_annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations of those ServiceAccounts, e.g. the cloud workload identity "
        "the stable pods need to read s3:// or gs:// models (as on service_account).",
    )
    trainer_resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "512Mi"}},
        description="Default resources of trainer containers.",
    )
    serving_resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "250m", "memory": "256Mi"}},
        description="Default resources of serving containers.",
    )
    serving_port: int = Field(8080, gt=0, lt=65536, description="Port of the inference server.")
    resync_seconds: float = Field(
        120.0,
        gt=0,
        description="How often every object is reconciled whatever happened (a safety net: "
        "changes of children and of the objects it waits on wake an object at once).",
    )
    tick_seconds: float = Field(
        1.0,
        gt=0,
        description="How often an object waiting on time (a canary step, a refresh round) "
        "or on what no watch reports (an artifact in the store, a snapshot pod) is looked at.",
    )
    peering_lifetime_seconds: int = Field(
        10,
        ge=2,
        le=600,
        description="With --peering: how long a replica's keep-alive counts. A standby takes "
        "over this long after the leader's last keep-alive when the leader dies without "
        "saying goodbye (a replica renews every 1-5 s at the default).",
    )
    history_limit: int = Field(10, ge=1, le=100, description="Dataset versions kept in status.")
    metrics_port: int = Field(
        8090, ge=0, lt=65536, description="Port of the operator's /metrics (0 disables)."
    )
    # --- alert receiver and retraining (docs/monitoring.md)
    webhook_port: int = Field(
        8095,
        ge=0,
        lt=65536,
        description="Port of the Alertmanager webhook receiver (0 disables it). It starts only "
        "when a token is configured.",
    )
    webhook_host: str = Field("0.0.0.0", description="Address the receiver listens on.")
    webhook_token: SecretStr | None = Field(
        None, description="Bearer token Alertmanager must send (or use webhook_token_file)."
    )
    webhook_token_file: Path | None = Field(
        None,
        description="File holding the bearer token (a mounted Secret); re-read when it changes.",
    )
    webhook_max_body_bytes: int = Field(
        1024 * 1024, gt=0, le=64 * 1024 * 1024, description="Largest webhook body (413 above)."
    )
    retrain_keys_limit: int = Field(
        20, ge=1, le=100, description="Retrain trigger keys kept in a ModelDeployment's status."
    )
    schedule_check_seconds: float = Field(
        30.0, gt=0, description="How often retrain.schedule is checked for a due tick."
    )
    # --- canary analysis (docs/rollouts.md): never a per-deployment field
    prometheus_url: str | None = Field(
        None,
        description="Prometheus the canary analysis queries (e.g. http://prometheus:9090); "
        "unset: every analysis check has no data.",
    )
    prometheus_bearer_token_file: Path | None = Field(
        None, description="File holding a bearer token for Prometheus (a mounted Secret)."
    )
    prometheus_ca_file: Path | None = Field(
        None, description="CA bundle to verify an https Prometheus with (a mounted Secret)."
    )
    prometheus_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Timeout of one Prometheus query."
    )
