"""Server settings, read once at start-up from ``KUBELOOP_SERVING_*`` variables.

``kubeloop serve`` turns its flags into these variables before starting the
server, so every worker process reads the same validated settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubeloop.serving.limits import (
    DEFAULT_MAX_PARAMETER_BYTES,
    DEFAULT_MAX_PARAMETER_DEPTH,
    DEFAULT_MAX_PARAMETER_KEYS,
    DEFAULT_MAX_REQUEST_ID,
    ENV_PREFIX,
    RequestLimits,
)


class ServingSettings(BaseSettings):
    """Everything the serving process can be told; each bound is checked at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, protected_namespaces=()
    )

    # --- the model
    model: str = Field(
        min_length=1,
        description="Model directory or fsspec URI holding model.onnx, model.json, profile.json.",
    )
    name: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="Name the model is served under; default: the name in model.json.",
    )
    model_version: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="Version label (the operator sets the ModelVersion number); default: the "
        "first 12 hex digits of the model's sha256.",
    )
    reload_interval: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds between checks of the model location for a new version; 0 = never.",
    )
    warmup_rows: int = Field(8, ge=0, le=10_000, description="Rows run through a new model.")
    ort_threads: int = Field(
        1, ge=0, le=256, description="onnxruntime intra-op threads (0 = onnxruntime's default)."
    )

    # --- transport
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free).")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol v2 gRPC service (GRPCInferenceService) "
        "on the same address, data plane and limits as REST; unset: no gRPC.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes. Metrics, drift windows and feedback are per process; "
        "in Kubernetes prefer one worker per pod and more replicas.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, le=1024**3, description="Largest request body (413 above)."
    )
    max_rows: int = Field(10_000, gt=0, description="Most rows in one inference request.")
    max_feedback_bytes: int = Field(
        1024 * 1024,
        gt=0,
        le=1024**3,
        description="Largest feedback body (413 above); feedback is parsed off the event loop, "
        "one body at a time.",
    )
    feedback_bytes_per_second: int = Field(
        1024 * 1024,
        ge=0,
        le=1024**3,
        description="Feedback bytes this process takes per second (a token bucket holding "
        "one largest body, max_feedback_bytes, or a second's worth); a body over it gets 429 "
        "with Retry-After, so a flood of feedback cannot take the interpreter from inference. "
        "0: no budget.",
    )
    max_in_flight: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Most requests being served at once (503 with Retry-After above); health "
        "and metrics endpoints are not counted. Bodies held in memory are at most this many "
        "times max_body_bytes.",
    )
    max_request_id: int = Field(
        DEFAULT_MAX_REQUEST_ID,
        ge=1,
        le=4096,
        description="Most characters in a request id (the body's 'id', the x-request-id "
        "header, a feedback id); 400 above. The id is echoed and kept per prediction.",
    )
    max_parameter_keys: int = Field(
        DEFAULT_MAX_PARAMETER_KEYS,
        ge=1,
        le=10_000,
        description="Most keys in one 'parameters' object of a request, all levels counted.",
    )
    max_parameter_bytes: int = Field(
        DEFAULT_MAX_PARAMETER_BYTES,
        ge=64,
        le=16 * 1024 * 1024,
        description="Largest 'parameters' object of a request, serialized as JSON, in bytes.",
    )
    max_parameter_depth: int = Field(
        DEFAULT_MAX_PARAMETER_DEPTH,
        ge=1,
        le=32,
        description="Deepest nesting of a 'parameters' object (the object itself is level 1).",
    )
    fast_path: bool = Field(
        True,
        description="Serve the inference routes from a raw ASGI dispatcher in front of FastAPI "
        "(same data plane; saves the framework's per-request cost).",
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        le=600,
        description="On SIGTERM: report not ready and keep serving this long before draining.",
    )
    shutdown_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds from the end of the drain to the exit: in-flight requests get it "
        "less a reserve (up to 5 s, at most half) in which the prediction log is flushed; the "
        "process is gone drain_seconds + shutdown_timeout after SIGTERM.",
    )
    thread_switch_ms: float = Field(
        1.0,
        ge=0.1,
        le=100,
        description="Longest a worker thread busy in Python (feedback decoding, the prediction "
        "log writer) holds the interpreter before the event loop gets it back "
        "(sys.setswitchinterval; Python's default is 5).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the server's own log lines."
    )

    # --- TLS
    tls_cert_file: str | None = Field(
        None,
        min_length=1,
        description="PEM certificate (chain) to serve HTTPS with; with tls_key_file. Unset: "
        "plain HTTP.",
    )
    tls_key_file: str | None = Field(
        None, min_length=1, description="PEM private key of tls_cert_file."
    )
    tls_ca_file: str | None = Field(
        None,
        min_length=1,
        description="CA bundle the canary forwarder verifies an https canary with. When unset or "
        "absent: the server's own tls_cert_file (the canary shares the deployment's "
        "certificate), else the system's trust store.",
    )
    tls_reload_interval: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds between checks of the TLS files; a renewed key pair or CA is "
        "loaded for new connections without a restart.",
    )

    # --- micro-batching
    batching: bool = Field(
        True, description="Coalesce concurrent requests into one onnxruntime call."
    )
    max_batch_size: int = Field(64, ge=1, le=100_000, description="Most rows in one model call.")
    run_in_thread: bool = Field(
        False,
        description="Run model calls on a worker thread (frees the event loop during long "
        "calls; costs a thread hand-off per call, which dominates for small models).",
    )
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Longest a request waits for others to join its batch; 0 = only requests "
        "that arrived in the same event-loop turn (no added latency when idle).",
    )
    grpc_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest a gRPC request waits for others to join its batch, only while "
        "concurrent gRPC requests are seen (one request is probed every 0.25 s); 0 = never. "
        "grpc.aio accepts one RPC per event-loop turn, so without it gRPC requests never "
        "share a model call.",
    )

    # --- drift
    drift: bool = Field(True, description="Compare live inputs with the reference profile.")
    drift_window: int = Field(1000, ge=10, le=10_000_000, description="Rows in the window.")
    drift_threshold: float = Field(
        0.2, gt=0, description="PSI above which the model counts as drifted (exported as a gauge)."
    )
    drift_features: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Features to watch, comma-separated; default all in the profile."
    )
    prediction_buckets_from: str | None = Field(
        None,
        min_length=1,
        description="Model directory or fsspec URI whose profile.json prediction edges bucket "
        "kubeloop_prediction_value (regression) instead of the served model's own; the operator "
        "sets the stable model's on canary pods, so both histograms share buckets. Unset: the "
        "served model's edges.",
    )

    # --- prediction log
    prediction_log: str | None = Field(
        None, description="Where prediction lines go: '-' for stdout, a file path, or unset."
    )
    prediction_log_queue: int = Field(
        10_000,
        gt=0,
        le=10_000_000,
        description="Requests queued for the log; past it the oldest are dropped (and counted).",
    )
    prediction_log_queue_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        le=16 * 1024**3,
        description="Estimated bytes the log queue holds; past it the oldest are dropped "
        "(and counted).",
    )
    prediction_log_inputs: float = Field(
        0.0, ge=0, le=1, description="Share of lines that also carry the inputs (0 to 1)."
    )
    prediction_log_sample_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of predictions written to the log (0 to 1); the rest are skipped "
        "uncounted, so a busy deployment can keep a representative sample.",
    )
    prediction_log_max_bytes: int = Field(
        100 * 1024 * 1024,
        ge=0,
        le=1024**4,
        description="Size at which a prediction log file is rotated (renamed <file>.1, older "
        "ones shifted to .2 …); 0: never. Standard output and FIFOs are never rotated.",
    )
    prediction_log_upload: str | None = Field(
        None,
        pattern=r"^[a-z0-9]+://.+",
        description="An object-store prefix (s3://bucket/logs, gs://…, az://…, file://…): each "
        "rotated file of the (local) prediction log is put at <prefix>/<pod_name>/<time "
        "ns>.jsonl and removed locally; on shutdown the current file too.",
    )
    pod_name: str = Field(
        "local", description="This pod's name: the folder its shipped prediction logs go to."
    )
    prediction_log_keep: int = Field(
        3,
        ge=1,
        le=100,
        description="Rotated prediction log files kept besides the current one; the oldest "
        "beyond it is deleted.",
    )

    # --- feedback
    feedback_capacity: int = Field(
        100_000, gt=0, le=100_000_000, description="Recent predictions kept for feedback."
    )
    feedback_capacity_bytes: int = Field(
        32 * 1024 * 1024,
        ge=64 * 1024,
        le=16 * 1024**3,
        description="Estimated bytes of the predictions kept for feedback; past it (or past "
        "feedback_capacity) the oldest are forgotten (and counted).",
    )
    feedback_window: int = Field(
        1000, gt=0, le=10_000_000, description="Rows in the rolling online metric."
    )
    feedback_peers: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*$",
        description="host:port (comma-separated, several) whose names resolve to every pod "
        "of the deployment (a headless Service): feedback for a request this pod did not "
        "answer is offered to them, once.",
    )
    pod_ip: str | None = Field(
        None, description="This pod's address: with port, left out of the feedback peers."
    )
    feedback_forward_timeout: float = Field(
        2.0, gt=0, le=60, description="Seconds one pod may take to answer forwarded feedback."
    )
    feedback_metric: Literal["accuracy", "rmse"] = Field(
        "accuracy", description="The online metric feedback_floor applies to."
    )
    feedback_floor: float | None = Field(
        None,
        ge=0,
        description="The deployment's floor for the online metric (for rmse, its ceiling), "
        "exported as kubeloop_online_metric_floor for the alert rule.",
    )

    # --- canary
    canary_url: str | None = Field(
        None, pattern=r"^https?://", description="Base URL of the canary server."
    )
    canary_weight: float = Field(
        0.0, ge=0, le=100, description="Percent of inference requests forwarded to the canary."
    )
    canary_shadow: bool = Field(
        False, description="Mirror requests to the canary instead; the stable model answers."
    )
    canary_version: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="The canary's version: the version label of its outcomes "
        "(kubeloop_canary_requests_total) and relayed answers; the routing file's "
        "canary_version overrides it. Unset: 'unknown'.",
    )
    routing_file: str | None = Field(
        None,
        description="A JSON/YAML file {canary_url, weight, shadow, canary_version} watched for "
        "changes; when set it overrides the canary_* values (the operator mounts a ConfigMap).",
    )
    routing_configmap: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Name of the routing ConfigMap to follow through the Kubernetes API (a "
        "watch: changes arrive in about a second); the routing file stays the start-up value "
        "and the fallback while the API is unreachable. Needs a token allowed to get/list/"
        "watch that ConfigMap (the operator gives stable pods one).",
    )
    routing_namespace: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace of that ConfigMap; default: the pod's (from its token mount).",
    )
    kube_api_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="The Kubernetes API server; default: https://$KUBERNETES_SERVICE_HOST:"
        "$KUBERNETES_SERVICE_PORT (what the kubelet sets in every pod).",
    )
    routing_watch_seconds: int = Field(
        240,
        ge=1,
        le=3600,
        description="How long the API server keeps one watch open (its timeoutSeconds); the "
        "next one resumes from the last resourceVersion.",
    )
    kube_token_file: str = Field(
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        description="Bearer token for the API (re-read at every reconnect: it is rotated).",
    )
    kube_ca_file: str | None = Field(
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        description="CA bundle the API server's certificate is checked against.",
    )
    canary_timeout: float = Field(5.0, gt=0, le=300, description="Seconds per canary request.")
    config_poll_interval: float = Field(
        1.0, gt=0, le=3600, description="Seconds between checks of the canary config file."
    )
    shadow_max_in_flight: int = Field(
        64, gt=0, le=100_000, description="Most mirrored requests at once (more are skipped)."
    )

    # --- write endpoints and artifact verification
    token_file: str | None = Field(
        None,
        description="File holding the bearer token that feedback and repository load/unload "
        "require (Authorization: Bearer <token>); read once at start. Unset: those routes are "
        "open (the operator always sets it, from the ModelDeployment's token Secret).",
    )
    model_control: bool = Field(
        False,
        description="Allow repository load and unload over HTTP (like Triton's explicit "
        "model-control mode); off: both answer 403 'model control disabled'.",
    )
    expected_sha256: str | None = Field(
        None,
        pattern=r"^[a-f0-9]{64}$",
        description="The registered sha256 of model.onnx (the operator sets the ModelVersion's "
        "digest); checked at the first load and every reload, a mismatch is never served.",
    )

    def request_limits(self) -> RequestLimits:
        """The request metadata bounds these settings give."""
        return RequestLimits(
            max_request_id=self.max_request_id,
            max_parameter_keys=self.max_parameter_keys,
            max_parameter_bytes=self.max_parameter_bytes,
            max_parameter_depth=self.max_parameter_depth,
        )

    @field_validator("drift_features", mode="before")
    @classmethod
    def _split_features(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [f.strip() for f in value.split(",") if f.strip()] or None
        return value

    @model_validator(mode="after")
    def _check(self) -> ServingSettings:
        if self.canary_weight > 0 and not self.canary_url and not self.routing_file:
            raise ValueError("canary_weight needs canary_url (or routing_file)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path is not None and not _readable(path):
                raise ValueError(f"{name}: cannot read {path}")
        return self


def _readable(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False
