"""The pure builders: what the operator asks the API server to create."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubeloop.api.v1alpha1 import DatasetSpec, ModelDeploymentSpec, TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.results import EXIT_BAD_INPUT, EXIT_REJECTED, SOURCE_URL_ENV, JobResult
from kubeloop.contracts.storage import CREDENTIAL_KEYS, SOURCE_PREFIX
from kubeloop.operator import builders
from kubeloop.operator.builders import Trained
from kubeloop.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def settings():
    return OperatorSettings(volume_claim="kubeloop-data", artifact_root="file:///data/kubeloop")


def parent(kind: str, name: str = "demo", generation: int = 1) -> dict:
    doc = yaml.safe_load((EXAMPLES / f"{kind.lower()}.yaml").read_text())
    doc["metadata"].update(name=name, namespace="ml", uid="0123456789abcdef", generation=generation)
    return doc


def test_snapshot_job_reads_the_source_and_passes_the_schema(settings):
    ds = parent("Dataset")
    job = builders.build_snapshot_job(ds, DatasetSpec.model_validate(ds["spec"]), 0, settings)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"] == "demo-snap-g1-0"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "0123456789abcdef"
    assert container["args"][:5] == [
        "snapshot",
        "--source",
        "/data/breast-cancer.csv",
        "--format",
        "csv",
    ]
    assert "file:///data/kubeloop/datasets/ml/demo" in container["args"]
    annotation = job["spec"]["template"]["metadata"]["annotations"][builders.SPEC_ANNOTATION]
    assert json.loads(annotation)["columns"][0]["name"] == "mean radius"
    assert container["terminationMessagePolicy"] == "File"
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["kubeloop-data"]


def test_snapshot_job_name_changes_with_generation_and_round(settings):
    assert builders.snapshot_job_name(
        parent("Dataset", generation=1), 0
    ) != builders.snapshot_job_name(parent("Dataset", generation=2), 0)
    assert builders.snapshot_job_name(parent("Dataset"), 7).endswith("-7")


def test_trainer_job_carries_the_spec_and_never_retries_a_verdict(settings):
    tj = parent("TrainingJob")
    spec = TrainingJobSpec.model_validate(tj["spec"])
    job = builders.build_trainer_job(tj, spec, "file:///data/snap/data.csv", settings)
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert json.loads(pod["metadata"]["annotations"][builders.SPEC_ANNOTATION]) == spec.to_wire()
    assert container["args"][container["args"].index("--data") + 1] == "file:///data/snap/data.csv"
    assert container["resources"] == spec.resources.to_wire()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["values"] == [EXIT_BAD_INPUT, EXIT_REJECTED]
    assert job["spec"]["activeDeadlineSeconds"] == 1800
    assert job["metadata"]["name"] == builders.trainer_job_name(tj) == "demo-train-01234"


def test_trainer_job_passes_the_sampling_to_the_trainer_in_its_spec(settings):
    """``spec.sampling`` reaches `kubeloop train --spec` with the rest of the spec (one
    source of truth, no flag that could disagree with it)."""
    tj = parent("TrainingJob")
    tj["spec"]["sampling"] = {"maxRows": 50_000, "seed": 9}
    spec = TrainingJobSpec.model_validate(tj["spec"])
    job = builders.build_trainer_job(tj, spec, "file:///data/snap/data.csv", settings)
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    given = TrainingJobSpec.model_validate(json.loads(annotations[builders.SPEC_ANNOTATION]))
    assert given.sampling is not None
    assert (given.sampling.max_rows, given.sampling.seed) == (50_000, 9)


def trained(metadata: dict | None = None, image: str | None = "kubeloop-trainer:1") -> Trained:
    summary = JobResult(
        kind="train",
        status="succeeded",
        artifact_uri=f"file:///a/{ArtifactLayout.MODEL}",
        sha256="a" * 64,
        metrics={"f1": 0.97},
    )
    return Trained(summary, metadata, "sha256:" + "b" * 64, image)


def test_model_version_records_lineage_and_outlives_its_training_job():
    tj = parent("TrainingJob")
    spec = TrainingJobSpec.model_validate(tj["spec"])
    mv = builders.build_model_version(tj, spec, 3, "breast-cancer-v3", trained())
    assert mv["spec"]["version"] == 3
    lineage = mv["spec"]["lineage"]
    assert lineage["trainingJob"] == "demo"
    assert lineage["image"] == "kubeloop-trainer:1"
    assert lineage["datasetVersion"] == "sha256:" + "b" * 64
    assert lineage["params"] == (spec.estimator.params or {})
    assert mv["metadata"]["labels"]["kubeloop.io/training-job-uid"] == "0123456789abcdef"
    assert mv["metadata"]["labels"]["kubeloop.io/model"] == "breast-cancer"
    # a registry entry: deleting the TrainingJob must not garbage-collect it
    assert "ownerReferences" not in mv["metadata"]
    without = builders.build_model_version(tj, spec, 3, "v3", trained(image=None))
    assert "image" not in without["spec"]["lineage"]


def test_lineage_params_are_the_search_winners():
    tj = parent("TrainingJob")
    tj["spec"]["estimator"] = {"className": "RandomForestClassifier", "params": {"max_depth": 3}}
    tj["spec"]["search"] = {"space": {"n_estimators": [10, 50], "max_depth": [2, 3]}}
    spec = TrainingJobSpec.model_validate(tj["spec"])
    fitted = {"n_estimators": 50, "max_depth": 2, "criterion": "gini"}
    metadata = {"lineage": {"params": fitted}}
    assert builders.lineage_params(spec, metadata) == {"n_estimators": 50, "max_depth": 2}
    # metadata unreadable: the requested parameters, never an invented winner
    assert builders.lineage_params(spec, None) == {"max_depth": 3}
    tj["spec"].pop("search")
    plain = TrainingJobSpec.model_validate(tj["spec"])
    assert builders.lineage_params(plain, metadata) == {"max_depth": 3}


def test_served_label_patches_move_the_label_with_the_versions():
    key = builders.served_by_label("demo")
    assert key == "served-by.kubeloop.io/demo"
    labels = {"m-v1": {key: "stable"}, "m-v2": {}}
    # v2 becomes the canary: label it, leave v1 alone
    assert builders.served_label_patches(
        "demo", ["m-v1"], {"m-v1": "stable", "m-v2": "canary"}, labels
    ) == {"m-v2": "canary"}
    # promoted: v2 is stable, v1 loses the label
    labels = {"m-v1": {key: "stable"}, "m-v2": {key: "canary"}}
    assert builders.served_label_patches("demo", ["m-v1", "m-v2"], {"m-v2": "stable"}, labels) == {
        "m-v1": None,
        "m-v2": "stable",
    }
    # nothing changed: no patch; another deployment's label is not ours
    labels = {"m-v2": {key: "stable", "served-by.kubeloop.io/other": "canary"}}
    assert builders.served_label_patches("demo", ["m-v2"], {"m-v2": "stable"}, labels) == {}
    # the deployment goes: every version it labelled loses the label
    assert builders.served_label_patches("demo", ["m-v2", "x-v1"], {}, labels) == {
        "m-v2": None,
        "x-v1": None,
    }


def serving_version(version: int) -> dict:
    uri = f"file:///data/kubeloop/models/ml/x/{ArtifactLayout.MODEL}"
    return {"spec": {"version": version, "artifact": {"uri": uri, "sha256": f"{version:x}" * 64}}}


def test_serving_deployment_and_routing(settings):
    md = parent("ModelDeployment")
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    mv = serving_version(2)
    dep = builders.build_serving_deployment(md, spec, mv, "stable", 2, settings)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["metadata"]["name"] == "demo-stable"
    assert dep["spec"]["selector"]["matchLabels"] == {
        "kubeloop.io/model-deployment": "demo",
        "kubeloop.io/role": "stable",
    }
    assert (
        container["args"][container["args"].index("--model") + 1]
        == "file:///data/kubeloop/models/ml/x"
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["KUBELOOP_SERVING_DRIFT_THRESHOLD"] == "0.2"
    # feedback for a request another pod answered is offered to the peers, not to itself
    assert env["KUBELOOP_SERVING_FEEDBACK_PEERS"] == "demo-pods.ml.svc:8080"
    assert env["KUBELOOP_SERVING_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    peers = builders.build_peers_service(md, settings)
    assert peers["metadata"]["name"] == "demo-pods"
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["selector"] == {
        "app.kubernetes.io/name": "kubeloop-serving",
        "kubeloop.io/model-deployment": "demo",
    }
    # spec.monitoring.feedback: the pods export the floor the alert rule compares with
    assert env["KUBELOOP_SERVING_FEEDBACK_METRIC"] == "accuracy"
    assert env["KUBELOOP_SERVING_FEEDBACK_FLOOR"] == "0.85"
    assert env["KUBELOOP_SERVING_FEEDBACK_WINDOW"] == "1000"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    routing = builders.build_routing_config(md, 10, 3, settings)
    assert json.loads(routing["data"]["routing.json"]) == {
        "canary_url": "http://demo-canary.ml.svc:8080",
        "canary_version": 3,
        "weight": 10,
    }
    assert (
        json.loads(builders.build_routing_config(md, 10, None, settings)["data"]["routing.json"])[
            "weight"
        ]
        == 0
    )
    assert builders.build_hpa(md, spec) is None


def kinds(children: list) -> list[tuple[str, str]]:
    """(kind, name) of each child, ``-`` before the kind of one that must be absent."""
    return [
        (f"-{c.kind}", c.name)
        if isinstance(c, builders.Absent)
        else (c["kind"], c["metadata"]["name"])
        for c in children
    ]


def test_serving_children_without_a_canary_delete_its_objects(settings):
    md = parent("ModelDeployment")
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    children = builders.serving_children(md, spec, serving_version(1), None, 0, settings)
    assert kinds(children) == [
        ("Deployment", "demo-stable"),
        ("Service", "demo"),
        ("Service", "demo-pods"),
        ("ConfigMap", "demo-routing"),
        ("-HorizontalPodAutoscaler", "demo-stable"),
        ("-NetworkPolicy", "demo"),
        ("-Deployment", "demo-canary"),
        ("-Service", "demo-canary"),
        ("-Deployment", "demo-shadow"),
        ("-Service", "demo-shadow"),
    ]
    assert children[0]["spec"]["replicas"] == 2
    assert children[0]["metadata"]["labels"]["app.kubernetes.io/version"] == "1"


def test_serving_children_with_a_canary_and_an_autoscaler(settings):
    md = parent("ModelDeployment")
    md["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 5}
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    children = builders.serving_children(
        md, spec, serving_version(1), serving_version(2), 10, settings
    )
    assert kinds(children) == [
        ("Deployment", "demo-stable"),
        ("Service", "demo"),
        ("Service", "demo-pods"),
        ("ConfigMap", "demo-routing"),
        ("HorizontalPodAutoscaler", "demo-stable"),
        ("-NetworkPolicy", "demo"),
        ("Deployment", "demo-canary"),
        ("Service", "demo-canary"),
        ("-Deployment", "demo-shadow"),
        ("-Service", "demo-shadow"),
    ]
    stable, canary = children[0], children[6]
    assert "replicas" not in stable["spec"]  # the autoscaler owns it
    assert canary["spec"]["replicas"] == 1  # 10% of 2, at least one
    assert canary["metadata"]["labels"]["app.kubernetes.io/version"] == "2"
    assert json.loads(children[3]["data"]["routing.json"])["canary_version"] == 2


def test_serving_pod_env_names_only_settings_the_server_reads(settings):
    """The operator configures serving pods through environment variables: each one it
    writes with the server's prefix must be a field of the server's settings."""
    from kubeloop.serving.settings import ENV_PREFIX, ServingSettings

    md = parent("ModelDeployment")
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    dep = builders.build_serving_deployment(md, spec, serving_version(2), "stable", 2, settings)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    written = {e["name"] for e in container["env"] if e["name"].startswith(ENV_PREFIX)}
    known = {f"{ENV_PREFIX}{name}".upper() for name in ServingSettings.model_fields}
    assert written, "the builder writes no serving settings"
    assert written <= known, f"unknown to the server: {sorted(written - known)}"


def pod_env(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def regression_version(version: int, directory: str) -> dict:
    mv = serving_version(version)
    mv["spec"]["task"] = "regression"
    mv["spec"]["artifact"]["uri"] = f"{directory}/{ArtifactLayout.MODEL}"
    return mv


def test_regression_canary_pods_bucket_predictions_with_the_stable_models_edges(settings):
    """predictionShift compares canary and stable value histograms bucket by bucket: the
    canary pods read the buckets from the stable model's directory (its profile.json)."""
    from kubeloop.serving.settings import ENV_PREFIX, ServingSettings

    md = parent("ModelDeployment")
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    stable = regression_version(1, "s3://models/ml/v1")
    canary = regression_version(2, "s3://models/ml/v2")
    children = builders.serving_children(md, spec, stable, canary, 10, settings)
    stable_dep, canary_dep = children[0], children[6]
    assert canary_dep["metadata"]["name"] == "demo-canary"
    key = f"{ENV_PREFIX}PREDICTION_BUCKETS_FROM"
    assert key.lower().removeprefix(ENV_PREFIX.lower()) in ServingSettings.model_fields
    assert pod_env(canary_dep)[key] == "s3://models/ml/v1"
    assert key not in pod_env(stable_dep)  # the stable pods use their own model's edges
    # a classification canary compares per-class counts: no buckets to share
    classes = builders.serving_children(
        md, spec, serving_version(1), serving_version(2), 10, settings
    )
    assert key not in pod_env(classes[6])


def test_routing_file_reads_back_as_the_servers_routing_config(settings):
    """What the operator writes into the routing ConfigMap is what the stable pods parse."""
    from kubeloop.contracts.routing import ROUTING_FILE, RoutingConfig

    md = parent("ModelDeployment")
    written = builders.build_routing_config(md, 20, 4, settings)["data"][ROUTING_FILE]
    assert RoutingConfig.model_validate_json(written) == RoutingConfig(
        url="http://demo-canary.ml.svc:8080", weight=20, canary_version=4
    )
    idle = builders.build_routing_config(md, 20, None, settings)["data"][ROUTING_FILE]
    assert not RoutingConfig.model_validate_json(idle).active


def tls_deployment(**spec: object) -> tuple[dict, ModelDeploymentSpec]:
    md = parent("ModelDeployment")
    md["spec"].update(spec)
    return md, ModelDeploymentSpec.model_validate(md["spec"])


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_tls_mounts_the_secret_and_serves_https(settings, role):
    md, spec = tls_deployment(tls={"secretName": "demo-tls"})
    dep = builders.build_serving_deployment(md, spec, serving_version(2), role, 1, settings)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"] == {"secretName": "demo-tls", "defaultMode": 0o440}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": "/etc/kubeloop/tls", "readOnly": True}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBELOOP_SERVING_TLS_CERT_FILE"] == "/etc/kubeloop/tls/tls.crt"
    assert env["KUBELOOP_SERVING_TLS_KEY_FILE"] == "/etc/kubeloop/tls/tls.key"
    assert env["KUBELOOP_SERVING_TLS_CA_FILE"] == "/etc/kubeloop/tls/ca.crt"
    # the certificate names the Services, not pod addresses: no feedback forwarding
    assert "KUBELOOP_SERVING_FEEDBACK_PEERS" not in env
    from kubeloop.serving.settings import ENV_PREFIX, ServingSettings

    known = {f"{ENV_PREFIX}{name}".upper() for name in ServingSettings.model_fields}
    assert set(env) <= known, sorted(set(env) - known)
    assert container["ports"] == [{"name": "https", "containerPort": 8080}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container[probe]["httpGet"]["port"] == "https"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"


def test_without_tls_the_pods_serve_plain_http(settings):
    md, spec = tls_deployment()
    dep = builders.build_serving_deployment(md, spec, serving_version(2), "stable", 1, settings)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "tls" not in {v["name"] for v in pod["volumes"]}
    assert not any(e["name"].startswith("KUBELOOP_SERVING_TLS_") for e in container["env"])
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert "scheme" not in container["readinessProbe"]["httpGet"]
    assert "prometheus.io/scheme" not in dep["spec"]["template"]["metadata"]["annotations"]
    assert builders.build_service(md, "stable", settings)["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "appProtocol": "http"}
    ]


def test_tls_services_and_urls_are_https(settings):
    from kubeloop.contracts.routing import ROUTING_FILE, RoutingConfig

    md, _ = tls_deployment(tls={"secretName": "demo-tls"})
    for role in ("stable", "canary"):
        assert builders.build_service(md, role, settings)["spec"]["ports"] == [
            {"name": "https", "port": 8080, "targetPort": "https", "appProtocol": "https"}
        ]
    assert builders.service_url(md, settings) == "https://demo.ml.svc:8080"
    written = builders.build_routing_config(md, 10, 3, settings)["data"][ROUTING_FILE]
    assert RoutingConfig.model_validate_json(written).url == "https://demo-canary.ml.svc:8080"


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_grpc_adds_a_port_named_grpc_to_pods_services_and_the_network_policy(settings, role):
    md, spec = tls_deployment(grpc={"port": 9000}, networkPolicy={})
    dep = builders.build_serving_deployment(md, spec, serving_version(2), role, 1, settings)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--grpc-port", "9000"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080},
        {"name": "grpc", "containerPort": 9000},
    ]
    assert builders.build_service(md, role, settings)["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "appProtocol": "http"},
        {"name": "grpc", "port": 9000, "targetPort": "grpc", "appProtocol": "grpc"},
    ]
    policy = builders.build_network_policy(md, spec, settings)
    assert policy is not None
    assert policy["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 8080},
        {"protocol": "TCP", "port": 9000},
    ]
    # the default port, and none without spec.grpc
    md, spec = tls_deployment(grpc={})
    assert builders.build_service(md, role, settings)["spec"]["ports"][1]["port"] == 8081
    md, spec = tls_deployment()
    dep = builders.build_serving_deployment(md, spec, serving_version(2), role, 1, settings)
    assert "--grpc-port" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_network_policy_admits_the_peers_and_the_deployments_own_pods(settings):
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]}},
    ]
    md, spec = tls_deployment(networkPolicy={"ingressFrom": peers})
    policy = builders.build_network_policy(md, spec, settings)
    assert policy is not None
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert policy["metadata"]["name"] == "demo"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "0123456789abcdef"
    own = {"matchLabels": {"kubeloop.io/model-deployment": "demo"}}
    assert policy["spec"] == {
        "podSelector": own,
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": own}, *peers], "ports": [{"protocol": "TCP", "port": 8080}]}
        ],
    }
    # the policy selects both the stable and the canary pods
    for role in ("stable", "canary"):
        dep = builders.build_serving_deployment(md, spec, serving_version(2), role, 1, settings)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert own["matchLabels"].items() <= pod_labels.items()


def test_an_empty_network_policy_admits_only_the_deployments_own_pods(settings):
    md, spec = tls_deployment(networkPolicy={})
    policy = builders.build_network_policy(md, spec, settings)
    assert policy is not None
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"kubeloop.io/model-deployment": "demo"}}}
    ]


def test_network_policy_is_applied_when_asked_for_and_deleted_when_not(settings):
    md, spec = tls_deployment(networkPolicy={"ingressFrom": [{"podSelector": {}}]})
    children = builders.serving_children(md, spec, serving_version(1), None, 0, settings)
    assert ("NetworkPolicy", "demo") in kinds(children)
    assert ("-NetworkPolicy", "demo") not in kinds(children)
    md, spec = tls_deployment()
    children = builders.serving_children(md, spec, serving_version(1), None, 0, settings)
    (absent,) = [
        c for c in children if isinstance(c, builders.Absent) and c.kind == "NetworkPolicy"
    ]
    assert absent == builders.Absent("networking.k8s.io/v1", "NetworkPolicy", "ml", "demo")


def test_feedback_token_secret_is_owned_named_and_carries_the_given_token():
    md = parent("ModelDeployment")
    secret = builders.build_feedback_token_secret(md, "tok-123")
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == "demo-feedback-token"
    assert secret["metadata"]["namespace"] == "ml"
    assert secret["stringData"] == {"token": "tok-123"}
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "ModelDeployment"
    assert owner["uid"] == "0123456789abcdef"
    assert owner["controller"] is True
    assert secret["metadata"]["labels"]["kubeloop.io/model-deployment"] == "demo"
    # pure: the same input gives the same object, the token only from the caller
    assert builders.build_feedback_token_secret(md, "tok-123") == secret
    long = parent("ModelDeployment", name="m" * 63)
    name = builders.build_feedback_token_secret(long, "t")["metadata"]["name"]
    assert len(name) <= 63
    assert name.endswith("-feedback-token")


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_serving_pods_mount_the_token_and_verify_the_registered_digest(settings, role):
    from kubeloop.serving.settings import ServingSettings

    md = parent("ModelDeployment")
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    mv = serving_version(3)
    dep = builders.build_serving_deployment(md, spec, mv, role, 1, settings)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v["name"] == "token")
    assert volume["secret"]["secretName"] == "demo-feedback-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert volume["secret"]["defaultMode"] == 0o440
    mount = next(m for m in container["volumeMounts"] if m["name"] == "token")
    assert mount["readOnly"] is True
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["KUBELOOP_SERVING_TOKEN_FILE"] == f"{mount['mountPath']}/token"
    assert env["KUBELOOP_SERVING_EXPECTED_SHA256"] == mv["spec"]["artifact"]["sha256"]
    assert "KUBELOOP_SERVING_MODEL_CONTROL" not in env  # load/unload stay off in the cluster
    # what the pod is told is valid for the server
    fields = {k.removeprefix("KUBELOOP_SERVING_").lower(): v for k, v in env.items()}
    ServingSettings(model="file:///m", **fields)


def test_snapshot_job_of_a_sql_source_takes_the_url_from_the_secret(settings):
    ds = yaml.safe_load_all((EXAMPLES / "dataset-postgresql.yaml").read_text())
    ds = next(d for d in ds if d["kind"] == "Dataset")
    ds["metadata"].update(namespace="ml", uid="0123456789abcdef", generation=1)
    spec = DatasetSpec.model_validate(ds["spec"])
    job = builders.build_snapshot_job(ds, spec, 0, settings)
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["snapshot", f"--query={spec.source.sql.query}"]
    assert args[2:4] == ["--format", "parquet"]
    assert "--source" not in args
    assert [a for a in args if "postgresql" in a] == []
    env = {e["name"]: e for e in container["env"]}
    assert env[SOURCE_URL_ENV] == {
        "name": SOURCE_URL_ENV,
        "valueFrom": {"secretKeyRef": {"name": "tumours-db", "key": "url"}},
    }
    assert "value" not in env[SOURCE_URL_ENV]


def test_a_sql_datasets_snapshot_is_found_as_parquet(settings):
    from kubeloop.operator.handlers.trainingjob import snapshot_uri

    ds = {
        "metadata": {"name": "d", "namespace": "ml"},
        "spec": {"source": {"sql": {"urlSecretRef": {"name": "s", "key": "k"}, "query": "q"}}},
    }
    uri = snapshot_uri(ds, "sha256:" + "a" * 64, settings)
    assert uri.endswith("/" + ArtifactLayout.data_file("parquet"))


def s3_dataset() -> dict:
    """The Dataset of examples/dataset-s3.yaml, as the API server hands it over."""
    docs = yaml.safe_load_all((EXAMPLES / "dataset-s3.yaml").read_text())
    ds = next(d for d in docs if d["kind"] == "Dataset")
    ds["metadata"].update(namespace="ml", uid="0123456789abcdef", generation=1)
    return ds


def refs(container: dict) -> dict[str, dict]:
    """The container's variables taken from Secrets: name -> secretKeyRef."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_snapshot_job_takes_the_sources_credentials_from_its_secret():
    store = OperatorSettings(artifact_root="s3://kubeloop-store", artifacts_secret="store-creds")
    ds = s3_dataset()
    job = builders.build_snapshot_job(ds, DatasetSpec.model_validate(ds["spec"]), 0, store)
    container = job["spec"]["template"]["spec"]["containers"][0]
    got = refs(container)
    for key in CREDENTIAL_KEYS:
        assert got[SOURCE_PREFIX + key] == {"name": "cancer-s3", "key": key, "optional": True}
        assert got[key] == {"name": "store-creds", "key": key, "optional": True}
    assert container["args"][:3] == ["snapshot", "--source", "s3://kubeloop-data/breast-cancer/"]
    assert "s3://kubeloop-store/datasets/ml/cancer-s3" in container["args"]
    assert all("value" not in e for e in container["env"] if e["name"] in got)
    assert "change-me" not in json.dumps(job)


def test_without_secrets_jobs_and_pods_use_their_ambient_identity(settings):
    ds = parent("Dataset")
    snap = builders.build_snapshot_job(ds, DatasetSpec.model_validate(ds["spec"]), 0, settings)
    tj = parent("TrainingJob")
    spec = TrainingJobSpec.model_validate(tj["spec"])
    train = builders.build_trainer_job(tj, spec, "s3://b/data.csv", settings)
    md = parent("ModelDeployment")
    mdspec = ModelDeploymentSpec.model_validate(md["spec"])
    dep = builders.build_serving_deployment(md, mdspec, serving_version(2), "stable", 2, settings)
    for pod in (snap["spec"]["template"], train["spec"]["template"], dep["spec"]["template"]):
        names = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert not names & {*CREDENTIAL_KEYS, *(SOURCE_PREFIX + k for k in CREDENTIAL_KEYS)}


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_trainer_jobs_and_serving_pods_get_the_artifact_stores_secret(role):
    store = OperatorSettings(artifact_root="s3://kubeloop-store", artifacts_secret="store-creds")
    tj = parent("TrainingJob")
    spec = TrainingJobSpec.model_validate(tj["spec"])
    job = builders.build_trainer_job(tj, spec, "s3://kubeloop-store/d/data.csv", store)
    md = parent("ModelDeployment")
    mdspec = ModelDeploymentSpec.model_validate(md["spec"])
    dep = builders.build_serving_deployment(md, mdspec, serving_version(2), role, 2, store)
    for pod in (job["spec"]["template"], dep["spec"]["template"]):
        got = refs(pod["spec"]["containers"][0])
        assert {k: v["name"] for k, v in got.items()} == dict.fromkeys(
            CREDENTIAL_KEYS, "store-creds"
        )
        assert all(v["optional"] is True and v["key"] in CREDENTIAL_KEYS for v in got.values())
    assert (
        "s3://kubeloop-store/models/ml/demo-01234567"
        in job["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_a_bare_version_is_inspected_by_a_job_named_after_its_digest(settings):
    mv = parent("ModelVersion", "net-v1")
    mv["spec"] = {
        "modelName": "net",
        "artifact": {"uri": "s3://models/net/model.onnx", "sha256": "ab12cd34" + "0" * 56},
    }
    assert builders.needs_inspection(mv["spec"])
    assert not builders.needs_inspection({**mv["spec"], "inputs": [{"name": "x"}]})
    job = builders.build_inspect_job(mv, settings)
    assert job["metadata"]["name"] == builders.inspect_job_name(mv) == "net-v1-inspect-ab12cd34"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelVersion"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == settings.trainer_image
    assert container["args"] == [
        "inspect", "--model", "s3://models/net/model.onnx", "--sha256", "ab12cd34" + "0" * 56,
    ]  # fmt: skip
    assert container["terminationMessagePolicy"] == "File"


def test_a_gateway_router_splits_by_an_http_route_and_the_pods_forward_nothing(settings):
    md = parent("ModelDeployment")
    md["spec"]["canary"] = {
        "steps": [{"weight": 20}],
        "router": "gateway",
        "gateway": {"parentRefs": [{"name": "public", "namespace": "infra"}],
                    "hostnames": ["demo.example.org"]},
    }  # fmt: skip
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    children = builders.serving_children(
        md, spec, serving_version(1), serving_version(2), 20, settings
    )
    (config,) = [
        c for c in children if not isinstance(c, builders.Absent) and c["kind"] == "ConfigMap"
    ]
    assert json.loads(config["data"]["routing.json"])["weight"] == 0
    route = children[-1]
    assert (route["kind"], route["metadata"]["name"]) == ("HTTPRoute", "demo")
    assert route["spec"] == {
        "parentRefs": [{"name": "public", "namespace": "infra"}],
        "hostnames": ["demo.example.org"],
        "rules": [
            {
                "backendRefs": [
                    {"name": "demo", "port": 8080, "weight": 80},
                    {"name": "demo-canary", "port": 8080, "weight": 20},
                ]
            }
        ],
    }
    # no canary: all of it to the stable Service
    alone = builders.serving_children(md, spec, serving_version(1), None, 0, settings)
    assert alone[-1]["spec"]["rules"] == [
        {"backendRefs": [{"name": "demo", "port": 8080, "weight": 100}]}
    ]
