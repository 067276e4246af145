"""The canary-analysis PromQL of docs/monitoring.md against a real Prometheus scraping real
stable and canary servers, labelled and configured as the operator builds their pods."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from serving_helpers import Server, free_port, prometheus_scraping, serving, wait_for

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.devcluster.monitoring import discovered_pod, serving_job
from kubeloop.operator import builders
from kubeloop.operator.dashboards import deployment_dashboard
from kubeloop.operator.settings import OperatorSettings
from kubeloop.operator.status_cli import read_drift

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "monitoring.md"
#: the settings of the operator's pod env that make sense outside a cluster
PASSED = ("KUBELOOP_SERVING_MODEL_VERSION", "KUBELOOP_SERVING_PREDICTION_BUCKETS_FROM")


def documented_queries() -> dict[str, str]:
    """The named queries of the doc's promql block (``# name: ...`` comments, then the query)."""
    (block,) = re.findall(r"```promql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    queries = {}
    for chunk in block.strip().split("\n\n"):
        lines = chunk.splitlines()
        name = lines[0].removeprefix("# ").split(":", 1)[0]
        queries[name] = "\n".join(line for line in lines if not line.startswith("#"))
    return queries


def filled(query: str, deployment: str, stable: str = "1", canary: str = "2") -> str:
    values = {
        "namespace": "ml",
        "deployment": deployment,
        "canaryVersion": canary,
        "stableVersion": stable,
    }
    return re.sub(r"\{\{ (\w+) \}\}", lambda m: values[m.group(1)], query)


def pod(deployment: str, model_dir: Path, role: str, version: int, task: str, stable_dir: Path):
    """The pod template the operator builds for ``role`` of ``deployment`` (labels, env)."""
    md = yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())
    md["metadata"].update(name=deployment, namespace="ml", uid="0123456789abcdef")
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    settings = OperatorSettings(volume_claim="data", artifact_root="file:///data")

    def mv(number: int, directory: Path) -> dict:
        uri = f"{directory}/{ArtifactLayout.MODEL}"
        return {"spec": {"version": number, "task": task, "artifact": {"uri": uri, "sha256": ""}}}

    built = builders.build_serving_deployment(
        md, spec, mv(version, model_dir), role, 1, settings, stable_mv=mv(1, stable_dir)
    )
    template = built["spec"]["template"]
    env = {e["name"]: e["value"] for e in template["spec"]["containers"][0]["env"] if "value" in e}
    return template["metadata"]["labels"], {k: v for k, v in env.items() if k in PASSED}


@contextlib.contextmanager
def prometheus(workdir: Path, targets: list[tuple[Server, dict[str, str]]]) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` (server, pod labels) with the documented job."""
    groups = [
        discovered_pod(
            server.url.removeprefix("http://"),
            {"metadata": {"namespace": "ml", "name": f"pod-{i}", "labels": labels}},
        )
        for i, (server, labels) in enumerate(targets)
    ]
    with prometheus_scraping(workdir, serving_job(static_configs=groups)) as url:
        yield url


def query(prom: str, expr: str) -> list[dict]:
    """An instant query's result ([] while Prometheus is not up yet)."""
    try:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.TransportError:
        return []
    assert r.status_code in (200, 503), r.text  # a bad query is a 400: fail at once
    result: list[dict] = r.json().get("data", {}).get("result", []) if r.status_code == 200 else []
    return result


def scalar(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def v2(rows: pd.DataFrame) -> str:
    data = rows.to_numpy(np.float32).ravel().tolist()
    shape = list(rows.shape)
    return json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]})


def send(server: Server, model: str, payload: str, n: int) -> None:
    with server.client() as http:
        for _ in range(n):
            r = http.post(
                f"/v2/models/{model}/infer",
                content=payload,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def promql_canary_model(data_dir, tmp_path_factory):
    from serving_helpers import train

    out = tmp_path_factory.mktemp("cancer_promql_canary")
    return train(data_dir / "cancer.csv", "target", "classification", "LogisticRegression", out,
                 '{"C": 0.05, "max_iter": 2000}')  # fmt: skip


@dataclass
class Fleet:
    """A canary ("cancer", classification, half the traffic forwarded by the stable) and a
    regression pair ("diab"), scraped by one Prometheus; ``q`` the documented queries."""

    prom: str
    servers: dict[str, Server]
    q: dict[str, str]


def regression_canary(diabetes_model: Path, tmp: Path) -> Path:
    """The regression model again, but with its own prediction edges unlike the stable's."""
    model = shutil.copytree(diabetes_model, tmp / "diabetes-canary")
    profile = json.loads((model / ArtifactLayout.PROFILE).read_text())
    profile["prediction"].update(edges=[0.0, 1000.0, 2000.0], counts=[1, 1])
    (model / ArtifactLayout.PROFILE).write_text(json.dumps(profile))
    return model


def start_pods(
    stack: contextlib.ExitStack, tmp: Path, models: dict[str, Path]
) -> list[tuple[str, Server, dict[str, str]]]:
    """The four servers, each with its pod's labels and env as the operator builds them."""
    plan = [  # key, deployment, model, role, version, task, stable model
        ("c_canary", "cancer", "canary", "canary", 2, "classification", "cancer"),
        ("c_stable", "cancer", "cancer", "stable", 1, "classification", "cancer"),
        ("r_stable", "diab", "diabetes", "stable", 1, "regression", "diabetes"),
        ("r_canary", "diab", "reg_canary", "canary", 2, "regression", "diabetes"),
    ]
    routing = tmp / "routing.json"
    started = []
    for key, deployment, model, role, version, task, stable in plan:
        labels, env = pod(deployment, models[model], role, version, task, models[stable])
        args = ["--name", deployment]
        if key == "c_stable":
            canary_url = started[0][1].url
            doc = {"canary_url": canary_url, "weight": 50, "canary_version": 2}
            routing.write_text(json.dumps(doc))
            args += ["--routing-file", str(routing)]
        server = stack.enter_context(serving(models[model], *args, env=env))
        started.append((key, server, labels))
    return started


@pytest.fixture(scope="module")
def fleet(cancer_model, promql_canary_model, diabetes_model, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("promql")
    models = {
        "cancer": cancer_model,
        "canary": promql_canary_model,
        "diabetes": diabetes_model,
        "reg_canary": regression_canary(diabetes_model, tmp),
    }
    cancer = pd.read_csv(data_dir / "cancer.csv").drop(columns=["target"])
    diabetes = pd.read_csv(data_dir / "diabetes.csv").drop(columns=["target"])
    with contextlib.ExitStack() as stack:
        pods = start_pods(stack, tmp, models)

        def has_numbers(expr: str) -> bool:
            """Numbers, and for a query by version, numbers for both versions."""
            found = query(prom, expr)
            if "by (version" in expr and {r["metric"]["version"] for r in found} != {"1", "2"}:
                return False
            return bool(found) and not any(math.isnan(float(r["value"][1])) for r in found)

        prom = stack.enter_context(prometheus(tmp, [(s, labels) for _, s, labels in pods]))
        servers = {key: s for key, s, _ in pods}
        # every series at 0 in Prometheus before the traffic: rate() counts from there
        scraped = "count(count_over_time(up[5m]) >= 3 and up == 1)"
        wait_for("three scrapes of each pod", lambda: scalar(prom, scraped) == 4, timeout=60)
        send(servers["c_stable"], "cancer", v2(cancer.iloc[:1]), 100)  # half to the canary
        send(servers["r_stable"], "diab", v2(diabetes.iloc[:5]), 20)
        send(servers["r_canary"], "diab", v2(diabetes.iloc[5:10]), 20)
        q = {name: filled(expr, "diab" if name == "value-histogram" else "cancer")
             for name, expr in documented_queries().items()}  # fmt: skip
        wait_for("every query to have a number", lambda: all(map(has_numbers, q.values())))
        yield Fleet(prom, servers, q)


def test_the_doc_names_each_building_block():
    assert set(documented_queries()) == {
        "canary-error-share",
        "canary-own-5xx-share",
        "p99-ratio",
        "class-counts",
        "value-histogram",
    }


def test_a_healthy_canary_has_no_error_share(fleet):
    """0, not "no data", while nothing failed (the failure outcomes are exported at 0)."""
    assert scalar(fleet.prom, fleet.q["canary-error-share"]) == 0
    assert scalar(fleet.prom, fleet.q["canary-own-5xx-share"]) == 0


def test_the_p99_ratio_compares_the_canary_pods_with_the_stable_pods(fleet):
    ratio = scalar(fleet.prom, fleet.q["p99-ratio"])
    assert ratio is not None
    assert math.isfinite(ratio)
    assert ratio > 0


def test_class_counts_come_per_version(fleet):
    classes = query(fleet.prom, fleet.q["class-counts"])
    assert {r["metric"]["version"] for r in classes} == {"1", "2"}


def test_the_regression_canary_buckets_with_the_stable_models_edges(fleet):
    hist = query(fleet.prom, fleet.q["value-histogram"])
    les = {v: {r["metric"]["le"] for r in hist if r["metric"]["version"] == v} for v in "12"}
    assert les["1"] == les["2"]
    assert len(les["1"]) > 4
    assert "1000.0" not in les["2"]  # not the canary model's own edges


@pytest.mark.parametrize(
    "metric",
    [
        "kubeloop_requests_total",
        "kubeloop_request_duration_seconds_count",
        "kubeloop_predictions_total",
        "kubeloop_prediction_value_count",
    ],
)
def test_every_request_latency_and_prediction_series_names_version_and_role(fleet, metric):
    series = query(fleet.prom, metric)
    assert series
    assert all(s["metric"].get("role") in ("stable", "canary") for s in series)
    assert all(s["metric"].get("version") in ("1", "2") for s in series)


def test_a_canary_gone_shows_in_the_error_share_while_clients_are_served(fleet, data_dir):
    """Last in this module: it stops the canary."""
    cancer = pd.read_csv(data_dir / "cancer.csv").drop(columns=["target"])
    fleet.servers["c_canary"].stop()
    send(fleet.servers["c_stable"], "cancer", v2(cancer.iloc[:1]), 40)  # each answered 200
    wait_for(
        "the canary's failures in the error share",
        lambda: (scalar(fleet.prom, fleet.q["canary-error-share"]) or 0) > 0,
        timeout=60,
    )


def test_kubeloop_status_reads_the_stable_pods_drift_per_feature(fleet, data_dir):
    drift, note = read_drift(fleet.prom, "ml", ["cancer"])
    assert note is None, note
    features = set(pd.read_csv(data_dir / "cancer.csv").columns) - {"target"}
    assert {d.feature for d in drift} == features
    assert all(d.deployment == "cancer" and d.score >= 0 for d in drift)
    threshold = yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())["spec"][
        "monitoring"
    ]["drift"]["threshold"]
    assert {d.threshold for d in drift} == {threshold}
    # a deployment without traffic has no series yet; a Prometheus that is not there, a note
    assert read_drift(fleet.prom, "ml", ["nothing"]) == (
        [],
        "no drift series yet (no traffic, or not scraped)",
    )
    closed = f"http://127.0.0.1:{free_port()}"
    drift, note = read_drift(closed, "ml", ["cancer"])
    assert drift == []
    assert str(note).startswith(f"Prometheus at {closed} did not answer")


def test_the_dashboards_canary_forwards_query_reads_the_forwarding_stable(fleet):
    (panel,) = [p for p in deployment_dashboard().panels if p.title == "Canary forwards by outcome"]
    expr = panel.targets[0].expr.replace("$namespace", "ml").replace("$deployment", "cancer")
    found = query(fleet.prom, expr.replace("$__rate_interval", "1m"))
    outcomes = {(r["metric"]["version"], r["metric"]["outcome"]): r["value"][1] for r in found}
    assert set(outcomes) == {
        ("2", o) for o in ("ok", "client_error", "server_error", "unreachable")
    }
    assert float(outcomes[("2", "ok")]) > 0
