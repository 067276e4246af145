"""Each CEL rule and its Python twin give the same verdict on the same objects.

The CEL is evaluated with cel-python, so a typo in a rule is caught here; that
the API server enforces it is proven by the cluster tier.
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from pydantic import ValidationError

from kubeloop.api.base import KubeModel, Rule
from kubeloop.api.v1alpha1 import (
    AnalysisMetric,
    Autoscaling,
    BatchPredictionSpec,
    Canary,
    CompareTo,
    DatasetRef,
    DatasetSpec,
    DataSource,
    LabelSelectorRequirement,
    ModelRef,
    NetworkPolicyPeer,
    PredictionLog,
    PredictionLogPVC,
    PredictionOutput,
    Sampling,
    Search,
    Split,
    TrainingJobSpec,
    VersionPolicy,
)


def _is_sorted(values: Any) -> celpy.celtypes.BoolType:
    items = list(values)
    return celpy.celtypes.BoolType(items == sorted(items))


def cel(rule: Rule, obj: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule.cel), functions={"isSorted": _is_sorted})
    return bool(program.evaluate({"self": celpy.json_to_cel(obj)}))


def python(model: type[KubeModel], obj: dict[str, Any]) -> bool:
    try:
        model.model_validate(obj)
    except ValidationError:
        return False
    return True


TJ = {
    "datasetRef": {"name": "d"},
    "task": "classification",
    "target": "y",
    "modelName": "m",
    "estimator": {"className": "LogisticRegression"},
}

BP = {
    "modelRef": {"modelName": "cancer"},
    "datasetRef": {"name": "cancer"},
    "output": {"uri": "s3://b/out/scores.parquet"},
}

SQL = {"urlSecretRef": {"name": "db", "key": "url"}, "query": "SELECT 1"}

CASES: list[tuple[type[KubeModel], dict[str, Any], bool]] = [
    (DataSource, {"path": "/data/x.csv"}, True),
    (DataSource, {"uri": "s3://b/x.csv"}, True),
    (DataSource, {}, False),
    (DataSource, {"path": "/x", "uri": "s3://b/x"}, False),
    (DataSource, {"sql": SQL}, True),
    (DataSource, {"uri": "s3://b/x", "sql": SQL}, False),
    (DataSource, {"path": "/x", "sql": SQL}, False),
    (DataSource, {"path": "/x", "uri": "s3://b/x", "sql": SQL}, False),
    (DataSource, {"uri": "s3://b/x", "secretRef": {"name": "s3-creds"}}, True),
    (DataSource, {"path": "/x", "secretRef": {"name": "s3-creds"}}, False),
    (DataSource, {"sql": SQL, "secretRef": {"name": "s3-creds"}}, False),
    (DatasetRef, {"name": "d"}, True),
    (DatasetRef, {"name": "d", "fresh": True}, True),
    (DatasetRef, {"name": "d", "fresh": False, "version": "sha256:" + "a" * 64}, True),
    (DatasetRef, {"name": "d", "fresh": True, "version": "sha256:" + "a" * 64}, False),
    (Split, {"testFraction": 0.25, "seed": 1}, True),
    (Sampling, {"maxRows": 1}, True),
    (Sampling, {"maxRows": 100_000, "seed": 3}, True),
    (Sampling, {"maxRows": 0}, False),
    (Search, {"space": {"max_depth": [3, 8]}}, True),
    (Search, {"space": {"max_depth": [3, 8]}, "parallelism": 1}, True),
    (Search, {"space": {"max_depth": [3, 8]}, "parallelism": 100}, True),
    (Search, {"space": {"max_depth": [3, 8]}, "parallelism": 0}, False),
    (Search, {"space": {"max_depth": [3, 8]}, "parallelism": 101}, False),
    (Split, {"testFraction": 0.0, "seed": 1}, False),
    (Split, {"testFraction": 1.0, "seed": 1}, False),
    (Split, {"testFraction": 1.5, "seed": 1}, False),
    (VersionPolicy, {"policy": "Latest"}, True),
    (VersionPolicy, {"policy": "Pinned", "pinned": 3}, True),
    (VersionPolicy, {"policy": "Pinned"}, False),
    (VersionPolicy, {"policy": "Latest", "pinned": 3}, False),
    (VersionPolicy, {"policy": "Pinned", "pinned": 0}, False),
    (Canary, {"steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}]}, True),
    (Canary, {"steps": [{"weight": 10, "pause": "1m"}, {"weight": 10, "pause": "1m"}]}, True),
    (Canary, {"steps": [{"weight": 50, "pause": "1m"}, {"weight": 10, "pause": "1m"}]}, False),
    (Canary, {"steps": [{"weight": 0, "pause": "1m"}]}, False),
    (Canary, {"steps": [{"weight": 101, "pause": "1m"}]}, False),
    (Autoscaling, {"minReplicas": 2, "maxReplicas": 5}, True),
    (Autoscaling, {"minReplicas": 5, "maxReplicas": 2}, False),
    (TrainingJobSpec, TJ, True),
    (TrainingJobSpec, {**TJ, "estimator": {"className": "Ridge"}}, False),
    (TrainingJobSpec, {**TJ, "estimator": {"className": "os.system"}}, False),
    (TrainingJobSpec, {**TJ, "task": "regression", "estimator": {"className": "Ridge"}}, True),
    (LabelSelectorRequirement, {"key": "team", "operator": "In", "values": ["a"]}, True),
    (LabelSelectorRequirement, {"key": "team", "operator": "NotIn", "values": ["a", "b"]}, True),
    (LabelSelectorRequirement, {"key": "team", "operator": "Exists"}, True),
    (LabelSelectorRequirement, {"key": "team", "operator": "DoesNotExist", "values": []}, True),
    (LabelSelectorRequirement, {"key": "team", "operator": "In"}, False),
    (LabelSelectorRequirement, {"key": "team", "operator": "NotIn", "values": []}, False),
    (LabelSelectorRequirement, {"key": "team", "operator": "Exists", "values": ["a"]}, False),
    (NetworkPolicyPeer, {"podSelector": {}}, True),
    (NetworkPolicyPeer, {"namespaceSelector": {"matchLabels": {"team": "a"}}}, True),
    (NetworkPolicyPeer, {"podSelector": {}, "namespaceSelector": {}}, True),
    (NetworkPolicyPeer, {}, False),
    (PredictionLog, {}, True),
    (PredictionLog, {"sink": "stdout"}, True),
    (PredictionLog, {"sink": "pvc", "pvc": {"claimName": "logs"}}, True),
    (PredictionLog, {"sink": "pvc"}, False),
    (PredictionLog, {"sink": "stdout", "pvc": {"claimName": "logs"}}, False),
    (PredictionLog, {"pvc": {"claimName": "logs"}}, False),  # sink defaults to stdout
    (PredictionLogPVC, {"claimName": "logs"}, True),
    (PredictionLogPVC, {"claimName": "logs", "path": "md/predictions"}, True),
    (PredictionLogPVC, {"claimName": "logs", "path": "a/../b"}, False),
    (CompareTo, {"policy": "Serving", "tolerance": 0.01}, True),
    (CompareTo, {"policy": "None"}, True),
    (CompareTo, {"policy": "Version", "version": 3, "metric": "rmse", "tolerance": 0.0}, True),
    (CompareTo, {"policy": "Version", "tolerance": 0.01}, False),
    (CompareTo, {"policy": "Serving", "version": 3, "tolerance": 0.01}, False),
    (CompareTo, {"policy": "Serving", "tolerance": -0.1}, False),
    (CompareTo, {"policy": "Serving", "metric": "loss", "tolerance": 0.01}, False),
    (TrainingJobSpec, {**TJ, "gate": {"compareTo": {"policy": "Serving", "metric": "f1"}}}, True),
    (TrainingJobSpec, {**TJ, "gate": {"compareTo": {"policy": "Serving"}}}, True),
    (TrainingJobSpec, {**TJ, "gate": {"compareTo": {"policy": "None", "metric": "rmse"}}}, False),
    (
        TrainingJobSpec,
        {
            **TJ,
            "task": "regression",
            "estimator": {"className": "Ridge"},
            "gate": {"compareTo": {"policy": "None", "metric": "accuracy"}},
        },
        False,
    ),
    (AnalysisMetric, {"name": "e", "builtin": "errorRate", "max": 0.05}, True),
    (AnalysisMetric, {"name": "q", "query": "up", "min": 1, "max": 1}, True),
    (AnalysisMetric, {"name": "e", "builtin": "errorRate", "query": "up", "max": 1}, False),
    (AnalysisMetric, {"name": "e", "max": 1}, False),
    (AnalysisMetric, {"name": "e", "builtin": "errorRate"}, False),
    (AnalysisMetric, {"name": "e", "builtin": "errorRate", "min": 2, "max": 1}, False),
    (ModelRef, {"name": "cancer-v3"}, True),
    (ModelRef, {"modelName": "cancer"}, True),
    (ModelRef, {"modelName": "cancer", "version": {"policy": "Pinned", "pinned": 2}}, True),
    (ModelRef, {}, False),
    (ModelRef, {"name": "cancer-v3", "modelName": "cancer"}, False),
    (ModelRef, {"name": "cancer-v3", "version": {"policy": "Latest"}}, False),
    (PredictionOutput, {"uri": "s3://b/out/scores.parquet"}, True),
    (PredictionOutput, {"uri": "/data/out/Scores.CSV"}, True),
    (PredictionOutput, {"uri": "file:///data/out/scores.pq"}, True),
    (PredictionOutput, {"uri": "gs://b/scores", "format": "csv"}, True),
    (PredictionOutput, {"uri": "s3://b/scores.csv.tmp"}, False),
    (PredictionOutput, {"uri": "s3://b/scores"}, False),
    (PredictionOutput, {"uri": "scores.csv"}, False),
    (PredictionOutput, {"uri": "https://example.com/scores.csv"}, False),
    (BatchPredictionSpec, BP, True),
    (BatchPredictionSpec, {**BP, "schedule": "0 3 * * *"}, True),
    (BatchPredictionSpec, {**BP, "schedule": "*/15 0-6 1,15 * MON-FRI"}, True),
    (BatchPredictionSpec, {**BP, "schedule": "@daily"}, True),
    (BatchPredictionSpec, {**BP, "schedule": "0 3 * *"}, False),
    (BatchPredictionSpec, {**BP, "schedule": "every day"}, False),
    (BatchPredictionSpec, {**BP, "schedule": "@sometimes"}, False),
    (BatchPredictionSpec, {**BP, "schedule": "0 3 * * * ; rm"}, False),
]


@pytest.mark.parametrize(("model", "obj", "valid"), CASES)
def test_cel_and_python_agree(model, obj, valid):
    """Every negative case breaks a CEL rule; both languages must say so."""
    assert all(cel(rule, obj) for rule in model.rules) is valid
    assert python(model, obj) is valid


def test_python_error_names_the_field():
    with pytest.raises(ValidationError, match="testFraction must be greater than 0"):
        Split.model_validate({"testFraction": 2})


def test_every_rule_with_a_python_twin_is_exercised():
    tested = {model for model, _, _ in CASES}
    for model in tested:
        verdicts = {valid for m, _, valid in CASES if m is model}
        assert verdicts == {True, False}, f"{model.__name__} needs a positive and a negative case"


PEER_OK = [
    {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus", "tier": ""}}},
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    {"podSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a-1"]}]}},
]
PEER_BAD = {
    "key-with-space": {"podSelector": {"matchLabels": {"bad key": "x"}}},
    "key-prefix-upper": {"podSelector": {"matchLabels": {"Example.com/x": "x"}}},
    "key-name-too-long": {"podSelector": {"matchLabels": {"a" * 64: "x"}}},
    "value-with-space": {"podSelector": {"matchLabels": {"a": "b c"}}},
    "value-too-long": {"namespaceSelector": {"matchLabels": {"a": "x" * 64}}},
    "value-dash-first": {"namespaceSelector": {"matchLabels": {"a": "-x"}}},
    "expression-key": {"podSelector": {"matchExpressions": [{"key": "a/", "operator": "Exists"}]}},
    "expression-value": {
        "podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b!"]}]}
    },
}


def test_label_selectors_take_kubernetes_label_syntax_only():
    """What a NetworkPolicy's API validation would refuse is refused before the operator
    builds one (the schema checks values and expression keys; the model, matchLabels keys)."""
    assert python(NetworkPolicyPeer, {"podSelector": {}})
    for peer in PEER_OK:
        assert python(NetworkPolicyPeer, peer), peer
    rejected = [case for case, peer in PEER_BAD.items() if python(NetworkPolicyPeer, peer)]
    assert rejected == []


@pytest.mark.parametrize(
    "sql",
    [
        {"urlSecretRef": {"name": "db", "key": "url"}, "query": ""},
        {"urlSecretRef": {"name": "db", "key": "url"}, "query": "x" * 16385},
        {"urlSecretRef": {"name": "Db_Secret", "key": "url"}, "query": "SELECT 1"},
        {"urlSecretRef": {"name": "db", "key": "a/b"}, "query": "SELECT 1"},
        {"urlSecretRef": {"name": "db"}, "query": "SELECT 1"},
        {"query": "SELECT 1"},
    ],
    ids=["empty-query", "query-too-long", "secret-name", "secret-key", "no-key", "no-secret"],
)
def test_a_bad_sql_source_is_refused(sql):
    assert not python(DataSource, {"sql": sql})


def test_a_sql_snapshot_is_parquet_whatever_the_format_says():
    spec = DatasetSpec.model_validate({"source": {"sql": SQL}, "format": "csv"})
    assert spec.snapshot_format == "parquet"
    assert DatasetSpec.model_validate({"source": {"path": "/x"}}).snapshot_format == "csv"
