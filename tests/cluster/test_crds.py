"""The CRDs in a real API server: they install, their CEL rules reject bad objects with a
message naming the field, printer columns show in ``kubectl get``, status is a subresource,
and a ModelVersion's spec cannot change."""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubetest import Kubectl

from kubeloop.api import v1alpha1 as v1
from kubeloop.api.base import Rule
from kubeloop.api.v1alpha1 import KINDS, READY
from kubeloop.contracts.artifacts import ArtifactLayout, join

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "kubeloop.io", "v1alpha1"
PLURAL = {k.info.kind: k.info.plural for k in KINDS}
NOW = "2026-01-01T00:00:00Z"


def example(kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{kind.lower()}.yaml").read_text())
    return doc


def ready(generation: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Reconciled",
            "message": "",
            "lastTransitionTime": NOW,
            "observedGeneration": generation,
        }
    ]


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def test_crds_are_established(kubectl: Kubectl):
    crds = kubectl.json("get", "crd", "-l", "app.kubernetes.io/part-of=kubeloop")["items"]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(
        f"{p}.{GROUP}" for p in PLURAL.values()
    )
    for crd in crds:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", crd["metadata"]["name"]
        assert conditions["NamesAccepted"] == "True", crd["metadata"]["name"]


@pytest.mark.parametrize("kind", list(PLURAL))
def test_example_is_accepted(kind: str, custom: client.CustomObjectsApi, namespace: str):
    body = example(kind)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], body)
    assert created["metadata"]["generation"] == 1
    first = {"Dataset": "source", "BatchPrediction": "modelRef"}.get(kind, "modelName")
    assert created["spec"][first]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting a dotted ``path`` (relative to the object) to ``value``."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return mutate


def violation(
    kind: str, case: str, path: str, value: Any, rule: Rule, field: str | None = None
) -> tuple[str, str, Callable[[dict[str, Any]], None], str, Rule]:
    """Setting ``spec.<path>`` of ``kind``'s example to ``value`` breaks ``rule``; the error
    names ``spec.<field>`` (by default the path). The case's id is ``<kind>-<case>``."""
    mutate = _set(f"spec.{path}", value)
    return (f"{kind.lower()}-{case}", kind, mutate, f"spec.{field or path}", rule)


DS, TJ, MD = "Dataset", "TrainingJob", "ModelDeployment"
SOURCE, SPLIT, SPEC = v1.DataSource.rules, v1.Split.rules, v1.TrainingJobSpec.rules
PINNING, CANARY, SCALING = v1.VersionPolicy.rules, v1.Canary.rules, v1.Autoscaling.rules
PEER, REQUIREMENT = v1.NetworkPolicyPeer.rules, v1.LabelSelectorRequirement.rules
COMPARE = v1.CompareTo.rules
EXISTS_WITH_VALUES = {"key": "team", "operator": "Exists", "values": ["a"]}
BOTH = {"path": "/data/a.csv", "uri": "file:///data/a.csv"}
SQL = {"urlSecretRef": {"name": "db", "key": "url"}, "query": "SELECT 1"}
CREDS = {"name": "s3-creds"}
METRIC = v1.AnalysisMetric.rules
PLOG, PLOG_PVC = v1.PredictionLog.rules, v1.PredictionLogPVC.rules
BP = "BatchPrediction"
MODEL_REF, OUTPUT, BP_SPEC = (
    v1.ModelRef.rules,
    v1.PredictionOutput.rules,
    v1.BatchPredictionSpec.rules,
)


def analysis(case: str, metric: dict[str, Any], rule: Rule, field: str) -> tuple[Any, ...]:
    """``spec.canary.analysis.metrics[0]`` set to ``metric`` breaks ``rule``, naming ``field``."""
    body = {"metrics": [{"name": "m", **metric}]}
    return violation(MD, case, "canary.analysis", body, rule, f"canary.analysis.metrics[0]{field}")


FEEDBACK = {"deploymentRef": {"name": "cancer"}}
DS_SPEC = v1.DatasetSpec.rules


def _feedback_without_target(doc: dict[str, Any]) -> None:
    doc["spec"]["source"] = {"feedback": FEEDBACK}
    doc["spec"].pop("target")


# (id, kind, mutation, the field the error must name, the rule (its message must show))
VIOLATIONS = [
    violation(DS, "path-and-uri", "source", BOTH, SOURCE[0]),
    violation(DS, "neither-path-nor-uri", "source", {}, SOURCE[0]),
    violation(DS, "uri-and-sql", "source", {"uri": "file:///data/a.csv", "sql": SQL}, SOURCE[0]),
    violation(DS, "path-and-sql", "source", {"path": "/data/a.csv", "sql": SQL}, SOURCE[0]),
    violation(DS, "secret-ref-with-path", "source", {"path": "/data/a.csv", "secretRef": CREDS},
              SOURCE[1]),
    violation(DS, "secret-ref-with-sql", "source", {"sql": SQL, "secretRef": CREDS}, SOURCE[1]),
    violation(DS, "path-and-feedback", "source", {"path": "/data/a.csv", "feedback": FEEDBACK},
              SOURCE[0]),
    ("dataset-feedback-without-target", DS, _feedback_without_target, "spec.target", DS_SPEC[0]),
    violation(DS, "feedback-version-column-is-target", "source",
              {"feedback": {**FEEDBACK, "versionColumn": "target"}}, DS_SPEC[1],
              "source.feedback.versionColumn"),
    violation(TJ, "test-fraction", "split.testFraction", 1.0, SPLIT[0]),
    violation(TJ, "fresh-and-pinned", "datasetRef",
              {"name": "cancer", "version": "sha256:" + "ab" * 32, "fresh": True},
              v1.DatasetRef.rules[0], "datasetRef.fresh"),
    violation(TJ, "sample-rows", "sampling.maxRows", 0, v1.Sampling.rules[0]),
    violation(TJ, "search-parallelism-zero", "search",
              {"space": {"max_depth": [3, 8]}, "parallelism": 0}, v1.Search.rules[0],
              "search.parallelism"),
    violation(TJ, "search-parallelism-too-many", "search",
              {"space": {"max_depth": [3, 8]}, "parallelism": 101}, v1.Search.rules[0],
              "search.parallelism"),
    violation(TJ, "estimator-not-for-task", "task", "regression", SPEC[0], "estimator.className"),
    violation(TJ, "estimator-unknown", "estimator.className", "SVC", SPEC[0]),
    violation(TJ, "estimator-boosted-not-for-task", "estimator.className", "XGBRegressor", SPEC[0]),
    violation(TJ, "estimator-boosted-unknown", "estimator.className", "XGBRanker", SPEC[0]),
    violation(
        TJ,
        "compare-version-missing",
        "gate",
        {"compareTo": {"policy": "Version"}},
        COMPARE[0],
        "gate.compareTo.version",
    ),
    violation(
        TJ,
        "compare-version-with-serving",
        "gate.compareTo",
        {"policy": "Serving", "version": 2},
        COMPARE[0],
        "gate.compareTo.version",
    ),
    violation(
        TJ,
        "compare-tolerance-negative",
        "gate.compareTo",
        {"policy": "Serving", "tolerance": -0.1},
        COMPARE[1],
        "gate.compareTo.tolerance",
    ),
    violation(
        TJ,
        "compare-metric-unknown",
        "gate.compareTo",
        {"policy": "Serving", "metric": "speed"},
        COMPARE[2],
        "gate.compareTo.metric",
    ),
    violation(
        TJ,
        "compare-metric-not-for-task",
        "gate.compareTo",
        {"policy": "None", "metric": "rmse"},
        SPEC[1],
        "gate.compareTo.metric",
    ),
    violation(
        MD,
        "retrain-compare-version-missing",
        "retrain.template.gate",
        {"compareTo": {"policy": "Version"}},
        COMPARE[0],
        "retrain.template.gate.compareTo.version",
    ),
    violation(MD, "pinned-missing", "version", {"policy": "Pinned"}, PINNING[0], "version.pinned"),
    violation(
        MD,
        "pinned-with-latest",
        "version",
        {"policy": "Latest", "pinned": 2},
        PINNING[0],
        "version.pinned",
    ),
    violation(
        MD,
        "pinned-zero",
        "version",
        {"policy": "Pinned", "pinned": 0},
        PINNING[1],
        "version.pinned",
    ),
    violation(
        MD, "canary-weight-range", "canary.steps", [{"weight": 10}, {"weight": 101}], CANARY[0]
    ),
    violation(
        MD, "canary-weight-decreasing", "canary.steps", [{"weight": 50}, {"weight": 10}], CANARY[1]
    ),
    violation(
        MD,
        "autoscaling",
        "autoscaling",
        {"minReplicas": 3, "maxReplicas": 2},
        SCALING[0],
        "autoscaling.maxReplicas",
    ),
    violation(MD, "retrain-estimator", "retrain.template.estimator.className", "Ridge", SPEC[0]),
    violation(
        MD,
        "retrain-test-fraction",
        "retrain.template.split",
        {"testFraction": 0.0},
        SPLIT[0],
        "retrain.template.split.testFraction",
    ),
    violation(
        MD,
        "network-policy-peer-without-selector",
        "networkPolicy",
        {"ingressFrom": [{"podSelector": {}}, {}]},
        PEER[0],
        "networkPolicy.ingressFrom[1]",
    ),
    violation(
        MD,
        "network-policy-values-with-exists",
        "networkPolicy",
        {"ingressFrom": [{"namespaceSelector": {"matchExpressions": [EXISTS_WITH_VALUES]}}]},
        REQUIREMENT[0],
        "networkPolicy.ingressFrom[0].namespaceSelector.matchExpressions[0].values",
    ),
    violation(MD, "prediction-log-pvc-missing", "predictionLog", {"sink": "pvc"}, PLOG[0],
              "predictionLog.pvc"),
    violation(MD, "prediction-log-pvc-with-stdout", "predictionLog",
              {"sink": "stdout", "pvc": {"claimName": "logs"}}, PLOG[0], "predictionLog.pvc"),
    violation(MD, "prediction-log-object-store-without-uri", "predictionLog",
              {"sink": "objectStore"}, PLOG[1], "predictionLog.uri"),
    violation(MD, "prediction-log-uri-with-stdout", "predictionLog",
              {"sink": "stdout", "uri": "s3://logs/x"}, PLOG[1], "predictionLog.uri"),
    violation(MD, "prediction-log-path-escapes", "predictionLog",
              {"sink": "pvc", "pvc": {"claimName": "logs", "path": "a/../b"}}, PLOG_PVC[0],
              "predictionLog.pvc.path"),
    violation(MD, "gateway-router-without-gateway", "canary.router", "gateway",
              CANARY[2], "canary.gateway"),
    violation(MD, "gateway-without-gateway-router", "canary.gateway",
              {"parentRefs": [{"name": "public"}]}, CANARY[2]),
    violation(MD, "feedback-accuracy-floor-above-one", "monitoring.feedback",
              {"metric": "accuracy", "floor": 1.5}, v1.FeedbackMonitoring.rules[0],
              "monitoring.feedback.floor"),
    analysis("analysis-builtin-and-query", {"builtin": "errorRate", "query": "up", "max": 1},
             METRIC[0], ".builtin"),
    analysis("analysis-neither-builtin-nor-query", {"max": 1}, METRIC[0], ".builtin"),
    analysis("analysis-no-bound", {"builtin": "errorRate"}, METRIC[1], ".max"),
    violation(BP, "model-ref-name-and-model-name", "modelRef", {"name": "m-v1", "modelName": "m"},
              MODEL_REF[0], "modelRef.name"),
    violation(BP, "model-ref-neither", "modelRef", {}, MODEL_REF[0], "modelRef.name"),
    violation(BP, "model-ref-version-with-name", "modelRef",
              {"name": "m-v1", "version": {"policy": "Latest"}}, MODEL_REF[1], "modelRef.version"),
    violation(BP, "output-format-unknown", "output", {"uri": "s3://b/scores"}, OUTPUT[0],
              "output.format"),
    violation(BP, "output-relative", "output", {"uri": "scores.csv"}, OUTPUT[1], "output.uri"),
    violation(BP, "output-http", "output", {"uri": "https://example.com/s.csv"}, OUTPUT[1],
              "output.uri"),
    violation(BP, "schedule-four-fields", "schedule", "0 3 * *", BP_SPEC[0]),
    violation(BP, "schedule-words", "schedule", "every night", BP_SPEC[0]),
    analysis("analysis-min-above-max", {"builtin": "errorRate", "min": 2, "max": 1},
             METRIC[2], ".min"),
]  # fmt: skip


def rejection(err: ApiException) -> str:
    assert err.status == 422, err.body
    message: str = json.loads(err.body)["message"]
    return message


@pytest.mark.parametrize(
    ("kind", "mutate", "field", "rule"),
    [pytest.param(*v[1:], id=v[0]) for v in VIOLATIONS],
)
def test_rule_rejects_violation_naming_the_field(
    kind: str,
    mutate: Callable[[dict[str, Any]], None],
    field: str,
    rule: Rule,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = example(kind)
    mutate(body)
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL[kind], body, dry_run="All"
        )
    message = rejection(info.value)
    assert f"{field}: Invalid value" in message, message
    assert rule.message in message, message


def all_rules() -> list[Rule]:
    return [
        rule
        for _, model in inspect.getmembers(v1, inspect.isclass)
        if model.__module__ == v1.__name__
        for rule in getattr(model, "rules", ())
    ]


def test_every_rule_has_a_negative_test():
    covered = {id(v[4]) for v in VIOLATIONS} | {id(v1.ModelVersionSpec.rules[0])}  # below
    assert [r.message for r in all_rules() if id(r) not in covered] == []


#: (id, mutation of the ModelDeployment example, the field named, what the error says)
SCHEMA_VIOLATIONS = [
    ("secret-name-uppercase", {"tls": {"secretName": "Cancer_TLS"}}, "spec.tls.secretName",
     "should match"),
    ("secret-name-too-long", {"tls": {"secretName": "a" * 254}}, "spec.tls.secretName",
     "Too long"),
    ("secret-name-missing", {"tls": {}}, "spec.tls.secretName", "Required value"),
    ("too-many-peers", {"networkPolicy": {"ingressFrom": [{"podSelector": {}}] * 17}},
     "spec.networkPolicy.ingressFrom", "Too many"),
    ("label-value", {"networkPolicy": {"ingressFrom": [{"podSelector": {"matchLabels": {
        "team": "a b"}}}]}}, "spec.networkPolicy.ingressFrom[0].podSelector.matchLabels",
     "should match"),
    ("expression-key", {"networkPolicy": {"ingressFrom": [{"namespaceSelector": {
        "matchExpressions": [{"key": "-team", "operator": "Exists"}]}}]}},
     "spec.networkPolicy.ingressFrom[0].namespaceSelector.matchExpressions[0].key",
     "should match"),
    ("analysis-unknown-builtin", {"canary": {"steps": [{"weight": 10}], "analysis": {"metrics": [
        {"name": "m", "builtin": "accuracy", "max": 1}]}}},
     "spec.canary.analysis.metrics[0].builtin", "Unsupported value"),
    ("analysis-failure-limit-zero", {"canary": {"steps": [{"weight": 10}], "analysis": {
        "failureLimit": 0, "metrics": [{"name": "m", "builtin": "errorRate", "max": 1}]}}},
     "spec.canary.analysis.failureLimit", "should be greater than or equal to 1"),
    ("analysis-too-many-metrics", {"canary": {"steps": [{"weight": 10}], "analysis": {"metrics": [
        {"name": f"m{i}", "builtin": "errorRate", "max": 1} for i in range(17)]}}},
     "spec.canary.analysis.metrics", "Too many"),
    ("sticky-header-not-a-header", {"canary": {"steps": [{"weight": 10}],
        "stickyBy": {"header": "x user"}}}, "spec.canary.stickyBy.header", "should match"),
    ("sticky-header-missing", {"canary": {"steps": [{"weight": 10}], "stickyBy": {}}},
     "spec.canary.stickyBy.header", "Required value"),
    ("shadow-percent-zero", {"shadow": {"version": 1, "percent": 0}},
     "spec.shadow.percent", "should be greater than 0"),
    ("shadow-version-missing", {"shadow": {"percent": 10}}, "spec.shadow.version",
     "Required value"),
    ("prediction-log-unknown-sink", {"predictionLog": {"sink": "s3"}},
     "spec.predictionLog.sink", "Unsupported value"),
    ("prediction-log-sample-rate", {"predictionLog": {"sampleRate": 1.5}},
     "spec.predictionLog.sampleRate", "should be less than or equal to 1"),
    ("prediction-log-claim-missing", {"predictionLog": {"sink": "pvc", "pvc": {}}},
     "spec.predictionLog.pvc.claimName", "Required value"),
    # an ipBlock is not part of the schema: pruned, which leaves a peer without a selector
    ("ip-block", {"networkPolicy": {"ingressFrom": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}},
     "spec.networkPolicy.ingressFrom[0]", PEER[0].message),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [pytest.param(*v[1:], id=v[0]) for v in SCHEMA_VIOLATIONS],
)
def test_a_modeldeployment_schema_violation_is_rejected_naming_the_field(
    spec: dict[str, Any], field: str, says: str, custom: client.CustomObjectsApi, namespace: str
):
    body = example("ModelDeployment")
    body["spec"].update(spec)
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL["ModelDeployment"], body, dry_run="All"
        )
    message = rejection(info.value)
    assert field in message, message
    assert says in message, message


@pytest.mark.parametrize(
    ("task", "class_name"),
    [
        ("classification", "XGBClassifier"),
        ("regression", "XGBRegressor"),
        ("classification", "LGBMClassifier"),
        ("regression", "LGBMRegressor"),
    ],
)
def test_every_framework_s_estimators_are_accepted(
    task: str, class_name: str, custom: client.CustomObjectsApi, namespace: str
):
    body = example(TJ)
    body["spec"].update(task=task, estimator={"className": class_name}, gate={})
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL[TJ], body, dry_run="All"
    )
    assert created["spec"]["estimator"]["className"] == class_name


def test_the_rejection_names_the_field_and_the_allow_list(
    custom: client.CustomObjectsApi, namespace: str
):
    body = example(TJ)
    body["spec"]["estimator"]["className"] = "SVC"
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL[TJ], body, dry_run="All"
        )
    message = rejection(info.value)
    assert "spec.estimator.className: Invalid value" in message, message
    assert "must name an allow-listed estimator for the task" in message, message
    assert "XGBClassifier, LGBMClassifier" in message, message


@pytest.mark.parametrize("manifest", ["trainingjob-xgboost.yaml", "trainingjob-lightgbm.yaml"])
def test_each_framework_example_is_accepted(
    manifest: str, custom: client.CustomObjectsApi, namespace: str
):
    body = yaml.safe_load((ROOT / "examples" / manifest).read_text())
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[TJ], body)
    assert created["spec"]["estimator"] == body["spec"]["estimator"]


def test_the_https_example_is_accepted(custom: client.CustomObjectsApi, namespace: str):
    body = yaml.safe_load((ROOT / "examples" / "modeldeployment-https.yaml").read_text())
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL["ModelDeployment"], body
    )
    assert created["spec"]["tls"] == {"secretName": "cancer-https-tls"}
    assert len(created["spec"]["networkPolicy"]["ingressFrom"]) == 3


def test_modelversion_spec_cannot_change(custom: client.CustomObjectsApi, namespace: str):
    plural, name = "modelversions", "breast-cancer-external-v1"
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, example("ModelVersion")
    )

    for change in (
        {"spec": {"metrics": {"accuracy": 0.5}}},
        {"spec": {"artifact": {"sha256": "0" * 64}}},
        {"spec": {"profileUri": join("file:///elsewhere", ArtifactLayout.PROFILE)}},
    ):
        with pytest.raises(ApiException) as info:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, change)
        message = rejection(info.value)
        assert "spec: Invalid value" in message, message
        assert v1.ModelVersionSpec.rules[0].message in message

    # Metadata and status may change; an unchanged spec passes the rule.
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name, {"metadata": {"labels": {"team": "ml"}}}
    )
    assert labelled["metadata"]["labels"] == {"team": "ml"}
    same = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name, {"spec": example("ModelVersion")["spec"]}
    )
    assert same["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": {"conditions": ready()}}
    )
    assert status["status"]["conditions"][0]["status"] == "True"


def test_status_subresource_separates_spec_and_status(
    custom: client.CustomObjectsApi, namespace: str
):
    plural, name = "datasets", "breast-cancer"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, example("Dataset"))

    # The main resource ignores status...
    main = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        plural,
        name,
        {"spec": {"format": "parquet"}, "status": {"rows": 7, "conditions": ready()}},
    )
    assert main["spec"]["format"] == "parquet"
    assert "status" not in main or "rows" not in main["status"]
    assert main["metadata"]["generation"] == 2

    # ...and /status ignores spec, without bumping the generation.
    status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        plural,
        name,
        {"spec": {"format": "jsonl"}, "status": {"rows": 7, "conditions": ready(2)}},
    )
    assert status["spec"]["format"] == "parquet"
    assert status["status"]["rows"] == 7
    assert status["metadata"]["generation"] == 2


# Status that fills every printer column read from status.
STATUS = {
    "Dataset": {"version": "sha256:" + "a" * 64, "rows": 569},
    "TrainingJob": {"phase": "Running", "version": 3},
    "ModelVersion": {},
    "ModelDeployment": {
        "phase": "Progressing",
        "stableVersion": 2,
        "canaryVersion": 3,
        "canaryWeight": 10,
        "url": "http://breast-cancer.ns.svc:8080",
    },
    "BatchPrediction": {
        "phase": "Succeeded",
        "modelVersion": "breast-cancer-v1",
        "rows": 569,
        "lastScheduleTime": NOW,
        "datasetVersion": "sha256:" + "a" * 64,
        "outputUri": "file:///data/kubeloop/predictions/ns/scores.parquet",
    },
}


def table(output: str) -> dict[str, str]:
    """kubectl's one-row table as {header: cell}; cells are cut at the headers' offsets
    (a missing value prints as an empty cell)."""
    header, row = output.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def column_value(obj: dict[str, Any], json_path: str) -> str:
    if json_path == READY.json_path:
        found = [c["status"] for c in obj["status"]["conditions"] if c["type"] == "Ready"]
        return found[0] if found else ""
    node: Any = obj
    for key in json_path.strip(".").split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return "" if node is None else str(node)


@pytest.mark.parametrize("resource", KINDS, ids=lambda r: r.info.kind)
def test_printer_columns_show_in_kubectl_get(
    resource: Any, custom: client.CustomObjectsApi, kubectl: Kubectl, namespace: str
):
    info = resource.info
    body = example(info.kind)
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, info.plural, body)
    obj = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        info.plural,
        name,
        {"status": {"conditions": ready(), **STATUS[info.kind]}},
    )

    for wide in (False, True):
        args = ["get", info.plural, name] + (["-o", "wide"] if wide else [])
        shown = table(kubectl(*args).stdout)
        columns = [c for c in info.printer_columns if wide or c.priority == 0]
        assert list(shown) == ["NAME", *(c.name.upper() for c in columns)]
        assert shown["NAME"] == name
        for c in columns:
            if c.type == "date":  # shown as an age ("5m"): there when the field is
                assert bool(shown[c.name.upper()]) == bool(column_value(obj, c.json_path))
            else:
                assert shown[c.name.upper()] == column_value(obj, c.json_path), c.name
    # The short name works too.
    assert kubectl("get", info.short_names[0], name, "-o", "name").stdout.strip() == (
        f"{info.kind.lower()}.{GROUP}/{name}"
    )


def test_category_lists_every_kind(
    custom: client.CustomObjectsApi, kubectl: Kubectl, namespace: str
):
    names = set()
    for kind, plural in PLURAL.items():
        body = copy.deepcopy(example(kind))
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        names.add(f"{kind.lower()}.{GROUP}/{body['metadata']['name']}")
    listed = set(kubectl("get", "kubeloop", "-o", "name").stdout.split())
    assert listed == names


#: (id, spec.source.sql of the PostgreSQL example, the field named, what the error says)
SQL_VIOLATIONS = [
    ("empty-query", {**SQL, "query": ""}, "spec.source.sql.query", "should be at least 1"),
    ("query-too-long", {**SQL, "query": "x" * 16385}, "spec.source.sql.query", "Too long"),
    ("no-secret", {"query": "SELECT 1"}, "spec.source.sql.urlSecretRef", "Required value"),
    ("secret-key", {**SQL, "urlSecretRef": {"name": "db", "key": "a/b"}},
     "spec.source.sql.urlSecretRef.key", "should match"),
    ("secret-name", {**SQL, "urlSecretRef": {"name": "DB", "key": "url"}},
     "spec.source.sql.urlSecretRef.name", "should match"),
]  # fmt: skip


def postgresql_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The Secret and the Dataset of examples/dataset-postgresql.yaml."""
    docs = list(yaml.safe_load_all((ROOT / "examples" / "dataset-postgresql.yaml").read_text()))
    return docs[0], docs[1]


@pytest.mark.parametrize(
    ("sql", "field", "says"), [pytest.param(*v[1:], id=v[0]) for v in SQL_VIOLATIONS]
)
def test_a_bad_sql_source_is_rejected_naming_the_field(
    sql: dict[str, Any], field: str, says: str, custom: client.CustomObjectsApi, namespace: str
):
    _, body = postgresql_example()
    body["spec"]["source"]["sql"] = sql
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL["Dataset"], body, dry_run="All"
        )
    message = rejection(info.value)
    assert field in message, message
    assert says in message, message


def test_the_postgresql_example_applies_with_its_secret(kubectl: Kubectl):
    """``kubectl apply -f examples/dataset-postgresql.yaml``: the Secret and a Dataset whose
    source is the query (the URL stays in the Secret)."""
    kubectl("apply", "-f", str(ROOT / "examples" / "dataset-postgresql.yaml"))
    secret, dataset = postgresql_example()
    stored = kubectl.json("get", "dataset", dataset["metadata"]["name"])
    assert stored["spec"]["source"] == dataset["spec"]["source"]
    assert stored["spec"]["source"]["sql"]["urlSecretRef"]["name"] == secret["metadata"]["name"]
    assert "postgresql://" not in json.dumps(stored)
    assert kubectl.json("get", "secret", secret["metadata"]["name"])["type"] == "Opaque"


def test_the_canary_analysis_example_is_accepted(custom: client.CustomObjectsApi, namespace: str):
    body = yaml.safe_load((ROOT / "examples" / "modeldeployment-canary-analysis.yaml").read_text())
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL["ModelDeployment"], body
    )
    analysis = created["spec"]["canary"]["analysis"]
    assert [m["name"] for m in analysis["metrics"]] == [
        "errors",
        "latency",
        "shift",
        "drift",
        "confident",
    ]
    assert created["spec"]["canary"]["progressDeadline"] == "10m"
