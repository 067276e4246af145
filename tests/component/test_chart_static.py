"""The Helm chart without a cluster: helm lint, what `helm template` renders, values and schema.

The chart must ship exactly the generated CRDs (crds/) and exactly the `kubeloop rules`
output; both are copies under charts/kubeloop/files/ made by `make chart`, and these tests
fail when a copy is stale. tests/cluster/test_chart.py installs the chart into the local
control plane.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from helmchart import CHART, CRD_DIR, NAMESPACE, RELEASE, SCENARIOS, helm, render, value_args
from kubeloop.api.v1alpha1 import KINDS
from kubeloop.operator.alerts import rules
from needs import prometheus_tool

#: Objects of these kinds are Kubernetes structures passed through as they are; their
#: keys need no comment of their own in values.yaml.
PASSTHROUGH = {
    "podSecurityContext",
    "securityContext",
    "resources",
    "liveness",
    "readiness",
    "nodeSelector",
    "tolerations",
    "affinity",
    "annotations",
    "labels",
    "podAnnotations",
    "podLabels",
    "commonLabels",
    "extraEnv",
    "accessModes",
    "imagePullSecrets",
}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[d['metadata'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(docs, "Deployment")
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in operator_container(docs)["env"]}


def rules_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = obj["rules"]
    return found


# ---------------------------------------------------------------- copies of generated files


def test_chart_crds_are_exactly_the_generated_crds():
    chart = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    generated = {p.name: p.read_bytes() for p in CRD_DIR.glob("*.yaml")}
    assert sorted(chart) == sorted(generated), "run `make chart`"
    stale = [name for name in generated if chart[name] != generated[name]]
    assert not stale, f"charts/kubeloop/files/crds differs from crds/ in {stale}: run `make chart`"


def test_rendered_crds_equal_the_generated_crds_but_for_labels_and_annotations():
    docs = find(render(), "CustomResourceDefinition")
    generated = {
        d["metadata"]["name"]: d
        for p in CRD_DIR.glob("*.yaml")
        for d in [yaml.safe_load(p.read_text())]
    }
    assert sorted(d["metadata"]["name"] for d in docs) == sorted(generated)
    for doc in docs:
        want = copy.deepcopy(generated[doc["metadata"]["name"]])
        got = copy.deepcopy(doc)
        for labels in (want["metadata"].pop("labels", {}), got["metadata"].pop("labels")):
            assert labels.get("app.kubernetes.io/part-of") == "kubeloop"
        got["metadata"].pop("annotations", None)
        want["metadata"].pop("annotations", None)
        assert got == want, doc["metadata"]["name"]


def test_chart_rules_are_exactly_kubeloop_rules():
    shipped = (CHART / "files" / "rules" / "kubeloop-rules.yaml").read_text()
    assert shipped == rules.render("rules"), "run `make chart`"


# ---------------------------------------------------------------- lint, values, schema


@pytest.mark.parametrize("scenario", ["(default)", *SCENARIOS])
def test_helm_lint_strict(scenario):
    values = () if scenario == "(default)" else (scenario,)
    out = helm("lint", "--strict", str(CHART), *value_args(values), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _defaults() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("scenario", ["(default)", *SCENARIOS])
def test_values_satisfy_the_schema(scenario):
    values = _defaults()
    if scenario != "(default)":
        values = _merge(values, yaml.safe_load((CHART / "ci" / scenario).read_text()))
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.validate(values, _schema(), cls=jsonschema.Draft7Validator)


def _walk(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of values.yaml missing from the schema, and closed schema keys missing from values."""
    problems: list[str] = []
    props = schema.get("properties")
    if props is None:
        return problems
    for key, value in values.items():
        if key not in props:
            problems.append(f"{path}{key}: in values.yaml, not in values.schema.json")
        elif isinstance(value, dict):
            problems += _walk(value, props[key], f"{path}{key}.")
    if schema.get("additionalProperties") is False:
        problems += [
            f"{path}{key}: in values.schema.json, not in values.yaml"
            for key in props
            if key not in values and key != "global"
        ]
    return problems


def test_schema_and_values_yaml_describe_the_same_values():
    assert _walk(_defaults(), _schema()) == []


def test_every_value_is_commented():
    """Every chart value has a comment line right above it (Kubernetes structures excepted)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if any(p in PASSTHROUGH for p in parents):
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            missing.append(".".join([*parents, key]))
    assert missing == [], f"values without a comment: {missing}"


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        ({"replicas": 2}, "replicas"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"watch": {"namespaces": ["Not_A_Namespace"]}}, "namespaces"),
        ({"alertReceiver": {"port": 70000}}, "port"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"config": {"historyLimit": 0}}, "historyLimit"),
    ],
)
def test_schema_rejects_bad_values(sets, complaint):
    out = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *value_args((), sets), check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert complaint in out.stderr


# ---------------------------------------------------------------- what gets rendered


def test_selector_labels_carry_no_versions():
    docs = render()
    dep = one(docs, "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "kubeloop",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "operator",
    }
    for svc in find(docs, "Service"):
        assert svc["spec"]["selector"] == selector
    labels = dep["metadata"]["labels"]
    assert labels["helm.sh/chart"] == "kubeloop-0.1.0"
    assert labels["app.kubernetes.io/version"] == "0.1.0"


def test_operator_deployment_defaults():
    docs = render()
    dep = one(docs, "Deployment", "kubeloop-operator")
    assert dep["metadata"]["namespace"] == NAMESPACE
    # two replicas with kopf peering: one reconciles, one stands by; a drain keeps one
    assert dep["spec"]["replicas"] == 2
    assert "strategy" not in dep["spec"]
    pdb = one(docs, "PodDisruptionBudget", "kubeloop-operator")
    assert pdb["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]},
    }
    assert env_of(docs)["KUBELOOP_PEERING_LIFETIME_SECONDS"] == "10"
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kubeloop-operator"
    container = pod["containers"][0]
    assert container["image"] == "kubeloop-operator:0.1.0"
    assert container["args"] == [
        "operator",
        f"--namespace={NAMESPACE}",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--peering",
        "--priority=auto",
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "healthz": 8081,
        "metrics": 8090,
        "webhook": 8095,
    }
    # restricted Pod Security, read-only root with an emptyDir on /tmp
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert volumes["webhook-token"]["secret"]["secretName"] == "kubeloop-webhook"
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}


def settings_from(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """OperatorSettings read from exactly the chart's KUBELOOP_* environment, as in the pod."""
    from kubeloop.operator.settings import OperatorSettings

    for key in list(os.environ):
        if key.startswith("KUBELOOP_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("KUBELOOP_"):
            monkeypatch.setenv(key, value)
    return OperatorSettings()


def test_operator_settings_come_from_values(monkeypatch):
    docs = render(
        sets={
            "trainer": {"image": {"repository": "registry.example/ml/trainer", "tag": "1.2.3"}},
            "serving": {
                "image": {
                    "repository": "registry.example/ml/serving",
                    "digest": "sha256:" + "a" * 64,
                },
                "port": 9000,
            },
            "workloads": {"imagePullPolicy": "Always"},
            "artifacts": {
                "root": "file:///mnt/ml",
                "volumeClaim": {"name": "ml", "mountPath": "/mnt"},
            },
            "config": {"resyncSeconds": 3, "historyLimit": 7},
            "alertReceiver": {"port": 9095, "maxBodyBytes": 4096},
            "metrics": {"port": 9090},
        }
    )
    env = env_of(docs)
    assert env["KUBELOOP_TRAINER_IMAGE"] == "registry.example/ml/trainer:1.2.3"
    assert env["KUBELOOP_SERVING_IMAGE"] == "registry.example/ml/serving@sha256:" + "a" * 64
    assert env["KUBELOOP_VOLUME_CLAIM"] == "ml"
    assert env["KUBELOOP_SERVICE_ACCOUNT"] == "kubeloop-workload"
    # What the operator makes of the chart's environment, parsed by its own settings class.
    settings = settings_from(env, monkeypatch)
    assert settings.trainer_image == "registry.example/ml/trainer:1.2.3"
    assert settings.image_pull_policy == "Always"
    assert settings.artifact_root == "file:///mnt/ml"
    assert settings.volume_claim == "ml"
    assert settings.volume_mount_path == "/mnt"
    assert settings.service_account == "kubeloop-workload"
    assert settings.serving_port == 9000
    assert settings.resync_seconds == 3
    assert settings.history_limit == 7
    assert settings.metrics_port == 9090
    assert settings.webhook_port == 9095
    assert settings.webhook_max_body_bytes == 4096
    assert str(settings.webhook_token_file) == "/var/run/kubeloop/webhook/token"
    assert settings.trainer_resources == {"requests": {"cpu": "500m", "memory": "512Mi"}}
    assert settings.serving_resources == {"requests": {"cpu": "250m", "memory": "256Mi"}}
    container = operator_container(docs)
    data = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert data == {"name": "data", "mountPath": "/mnt", "readOnly": True}


def test_artifact_store_secret_reaches_the_operator_and_its_settings(monkeypatch):
    """artifacts.secretRef: the operator gets every credential key from the Secret (each
    optional, by reference, never a value) and names the Secret to its Jobs and pods."""
    from kubeloop.contracts.storage import CREDENTIAL_KEYS

    docs = render(
        sets={"artifacts": {"root": "s3://ml-store/kubeloop", "secretRef": {"name": "store-creds"}}}
    )
    env = env_of(docs)
    for key in CREDENTIAL_KEYS:
        assert env[key] == {"secretKeyRef": {"name": "store-creds", "key": key, "optional": True}}
    settings = settings_from(env, monkeypatch)
    assert settings.artifacts_secret == "store-creds"
    assert settings.artifact_root == "s3://ml-store/kubeloop"
    default = env_of(render())
    assert "KUBELOOP_ARTIFACTS_SECRET" not in default
    assert not set(default) & set(CREDENTIAL_KEYS)


def test_default_env_parses_as_operator_settings(monkeypatch):
    settings = settings_from(env_of(render()), monkeypatch)
    assert settings.webhook_max_body_bytes == 1048576
    assert settings.volume_claim is None
    settings = settings_from(env_of(render("prometheus-values.yaml")), monkeypatch)
    assert settings.trainer_image == "kubeloop-trainer@sha256:" + "0123456789abcdef" * 4
    assert settings.volume_claim == "kubeloop-artifacts"
    assert settings.trainer_resources == {"requests": {"cpu": "500m", "memory": "512Mi"}}


@pytest.mark.parametrize(("keep", "annotated"), [(True, True), (False, False)])
def test_crds_keep(keep, annotated):
    crds = find(render(sets={"crds": {"keep": keep}}), "CustomResourceDefinition")
    assert len(crds) == len(KINDS)
    for crd in crds:
        policy = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert (policy == "keep") is annotated


def test_crds_disabled():
    assert not find(render(sets={"crds": {"enabled": False}}), "CustomResourceDefinition")


def _all_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in rules_of(d)]


@pytest.mark.parametrize("scenario", ["(default)", *SCENARIOS])
def test_rbac_never_grants_wildcards_secret_reads_or_escalation(scenario):
    docs = render() if scenario == "(default)" else render(scenario)
    for rule in _all_rules(docs):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), rule
        if "secrets" in rule["resources"]:
            # only the feedback-token Secrets it creates: no reading, listing or changing
            assert rule["verbs"] == ["create"], rule
            assert rule["resources"] == ["secrets"], rule
        assert not {"escalate", "bind", "impersonate", "update", "deletecollection"} & set(
            rule["verbs"]
        ), rule
        assert "admissionregistration.k8s.io" not in rule["apiGroups"], rule
        if "rbac.authorization.k8s.io" in rule["apiGroups"]:
            # each stable pod's Role and RoleBinding (its routing ConfigMap, read only):
            # made and kept in shape, watched (a change wakes the deployment), never read
            # one by one, deleted by the garbage collector
            assert rule["apiGroups"] == ["rbac.authorization.k8s.io"], rule
            assert rule["resources"] == ["roles", "rolebindings"], rule
            assert rule["verbs"] == ["list", "watch", "create", "patch"], rule
        if "customresourcedefinitions" in rule["resources"]:
            assert rule["verbs"] == ["list", "watch"]
        if "namespaces" in rule["resources"]:
            assert rule["verbs"] == ["list", "watch"]


def test_rbac_namespaced_mode():
    docs = render("namespaced-values.yaml")
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == [
        "kubeloop-ci-team-a",
        "kubeloop-ci-team-b",
    ]
    bindings = find(docs, "RoleBinding")
    assert len(bindings) == 2
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubeloop-operator", "namespace": NAMESPACE}
        ]
    cluster_role = one(docs, "ClusterRole")
    assert [(r["resources"], r["verbs"]) for r in rules_of(cluster_role)] == [
        (["customresourcedefinitions"], ["list", "watch"]),
        (["namespaces"], ["list", "watch"]),
    ]
    args = operator_container(docs)["args"]
    assert "--namespace=kubeloop-ci-team-a" in args
    assert "--namespace=kubeloop-ci-team-b" in args
    # a workload ServiceAccount in each watched namespace, without an API token
    accounts = find(docs, "ServiceAccount", "kubeloop-workload")
    assert sorted(a["metadata"]["namespace"] for a in accounts) == [
        "kubeloop-ci-team-a",
        "kubeloop-ci-team-b",
    ]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


def test_rbac_cluster_wide_mode():
    docs = render("cluster-wide-values.yaml")
    assert not find(docs, "Role")
    assert not find(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    resources = {res for r in rules_of(role) for res in r["resources"]}
    assert {"datasets", "jobs", "deployments", "customresourcedefinitions"} <= resources
    assert "namespaces" not in resources  # a cluster-wide kopf operator does not list them
    assert "--all-namespaces" in operator_container(docs)["args"]
    env = env_of(docs)
    assert "KUBELOOP_SERVICE_ACCOUNT" not in env
    assert "KUBELOOP_VOLUME_CLAIM" not in env
    assert env["KUBELOOP_ARTIFACT_ROOT"] == "s3://ml-artifacts/kubeloop"


def test_single_replica_is_standalone_and_has_no_peering():
    docs = render(include_crds=True, sets={"replicaCount": 1})
    assert "--standalone" in operator_container(docs)["args"]
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(docs, "KopfPeering")
    assert not find(docs, "PodDisruptionBudget")
    assert "KUBELOOP_PEERING_LIFETIME_SECONDS" not in env_of(docs)
    assert "POD_ID" not in env_of(docs)
    assert all(r["apiGroups"] != ["kopf.dev"] for r in _all_rules(docs))


def test_more_replicas_run_kopf_peering():
    docs = render("peering-values.yaml", include_crds=True)
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert "strategy" not in dep["spec"]
    args = operator_container(docs)["args"]
    assert "--peering" in args
    assert "--priority=auto" in args
    assert env_of(docs)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    peering = one(docs, "KopfPeering", "default")
    assert peering["metadata"]["namespace"] == "kubeloop-ci-team-a"
    role = one(docs, "Role")
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings"],
        "verbs": ["list", "watch", "patch"],
    } in rules_of(role)
    crds = {d["metadata"]["name"] for d in find(docs, "CustomResourceDefinition")}
    assert {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= crds


def test_cluster_wide_peering():
    docs = render("cluster-wide-peering-values.yaml")
    one(docs, "ClusterKopfPeering", "default")
    assert not find(docs, "KopfPeering")
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["list", "watch", "patch"],
    } in rules_of(one(docs, "ClusterRole"))


def test_webhook_token_generated_given_or_existing():
    generated = one(render(), "Secret", "kubeloop-webhook")
    token = base64.b64decode(generated["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
    assert token != base64.b64decode(one(render(), "Secret")["data"]["token"]).decode()

    given = one(render(sets={"alertReceiver": {"token": "s3cr3t"}}), "Secret")
    assert base64.b64decode(given["data"]["token"]) == b"s3cr3t"

    docs = render("existing-secret-values.yaml")
    assert not find(docs, "Secret")
    volume = next(
        v
        for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "webhook-token"
    )
    assert volume["secret"] == {
        "secretName": "alertmanager-kubeloop",
        "items": [{"key": "bearer", "path": "token"}],
    }
    svc = one(docs, "Service", "kubeloop-operator-webhook")
    assert svc["spec"]["ports"] == [
        {"name": "webhook", "port": 8095, "targetPort": "webhook", "protocol": "TCP"}
    ]


def test_receiver_disabled():
    docs = render("minimal-values.yaml")
    assert env_of(docs)["KUBELOOP_WEBHOOK_PORT"] == "0"
    assert env_of(docs)["KUBELOOP_METRICS_PORT"] == "0"
    assert not find(docs, "Secret")
    assert not find(docs, "Service")
    assert not find(docs, "ConfigMap")
    assert not find(docs, "Role")
    assert not find(docs, "ClusterRole")
    assert not find(docs, "ServiceAccount")
    assert not find(docs, "ValidatingAdmissionPolicy")
    assert (
        one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        == "platform-kubeloop"
    )


def test_prometheus_objects_carry_exactly_the_rules(tmp_path):
    docs = render("prometheus-values.yaml")
    rule = one(docs, "PrometheusRule", "kubeloop-rules")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == rules.rule_groups()
    # the rules as a PrometheusRule, not also as a ConfigMap (the dashboards' are the only ones)
    assert all(d["metadata"]["name"].endswith("-dash") for d in find(docs, "ConfigMap"))
    monitors = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["apiVersion"].startswith("monitoring.coreos.com")
    }
    assert monitors == {
        ("PrometheusRule", "kubeloop-rules"),
        ("ServiceMonitor", "kubeloop-operator"),
        ("PodMonitor", "kubeloop-operator"),
        ("PodMonitor", "kubeloop-serving"),
    }
    serving = one(docs, "PodMonitor", "kubeloop-serving")
    targets = {r["targetLabel"] for r in serving["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert rules.DEPLOYMENT_LABEL in targets

    config_map = one(render(), "ConfigMap", "kubeloop-rules")
    assert config_map["data"][rules.RULES_FILE] == rules.render("rules")


def test_promtool_accepts_the_rendered_rules(tmp_path):
    promtool = prometheus_tool("promtool")
    spec = one(render("prometheus-values.yaml"), "PrometheusRule")["spec"]
    (tmp_path / "prometheusrule.yaml").write_text(yaml.safe_dump(spec))
    data = one(render(), "ConfigMap", "kubeloop-rules")["data"][rules.RULES_FILE]
    (tmp_path / "configmap.yaml").write_text(data)
    for name in ("prometheusrule.yaml", "configmap.yaml"):
        out = subprocess.run(
            [promtool, "check", "rules", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_artifacts_claim_created_and_kept():
    docs = render("prometheus-values.yaml")
    pvc = one(docs, "PersistentVolumeClaim", "kubeloop-artifacts")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert pvc["spec"]["storageClassName"] == "standard"
    assert env_of(docs)["KUBELOOP_VOLUME_CLAIM"] == "kubeloop-artifacts"


def test_fullname_override_and_long_release_names():
    docs = render(release="a-very-long-release-name-for-kubeloop-in-production")
    for doc in docs:
        # DNS labels where the kind needs one; RBAC and admission policy names (DNS
        # subdomains) may be longer.
        longer = ("Role", "RoleBinding", "AdmissionPolicy", "AdmissionPolicyBinding")
        limit = 253 if doc["kind"].endswith(longer) else 63
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]
    names = {d["metadata"]["name"] for d in render(sets={"fullnameOverride": "ml"})}
    assert {"ml-operator", "ml-operator-webhook", "ml-webhook", "ml-rules"} <= names


def test_served_versions_policy_guards_delete_of_modelversions_in_watched_namespaces():
    docs = render(sets={"watch": {"namespaces": ["ml", "prod"]}})
    policy = one(docs, "ValidatingAdmissionPolicy")
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["operations"], rule["resources"]) == (
        ["kubeloop.io"],
        ["DELETE"],
        ["modelversions"],
    )
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (scope,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert scope["values"] == ["ml", "prod"]
    wide = one(render(sets={"watch": {"clusterWide": True}}), "ValidatingAdmissionPolicyBinding")
    assert "matchResources" not in wide["spec"]
    off = render(sets={"servedVersionProtection": {"enabled": False}})
    assert not find(off, "ValidatingAdmissionPolicy")
    assert not find(off, "ValidatingAdmissionPolicyBinding")


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar():
    from kubeloop.operator.dashboards import dashboards, to_json

    docs = render(sets={"dashboards": {"annotations": {"grafana_folder": "Kubeloop"}}})
    maps = {
        d["metadata"]["name"]: d
        for d in find(docs, "ConfigMap")
        if d["metadata"]["name"].endswith("-dash")
    }
    assert set(maps) == {"kubeloop-deployment-dash", "kubeloop-operator-dash"}
    shipped = {}
    for cm in maps.values():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Kubeloop"}
        shipped.update(cm["data"])
    # the chart ships exactly what the code generates (make verify-dashboards keeps it so)
    assert shipped == {name: to_json(d).rstrip("\n") for name, d in dashboards().items()}
    off = render(sets={"dashboards": {"enabled": False}})
    assert not [d for d in find(off, "ConfigMap") if d["metadata"]["name"].endswith("-dash")]
