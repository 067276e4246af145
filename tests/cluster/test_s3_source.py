"""A Dataset in S3 and an S3 artifact store, through the real operator and API server,
against a real S3 server (Versity Gateway, tests/s3_server.py).

kwok runs no containers: the test plays the kubelet, resolving each Job's environment
from the Secrets its ``secretKeyRef`` entries name (examples/dataset-s3.yaml's for the
source, ``store-creds`` for the store), and runs the Job's real command here. The
operator verifies the trained model's digest in S3 with the store's credentials, as the
chart gives them to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from kubelet import finish_pod
from operator_harness import (
    Cluster,
    OperatorProcess,
    container_env,
    operating,
    pod_of,
    run_job_locally,
    wait_for,
)

from kubeloop.contracts.storage import SOURCE_PREFIX
from kubeloop.trainer.stream import digest_of, read_batches
from s3_server import SECRET_KEY, S3Server

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dataset-s3.yaml"
DATA = ROOT / "examples" / "data" / "breast-cancer.csv"
NAME = "cancer-s3"
SOURCE_BUCKET = "kubeloop-cluster-data"
STORE_BUCKET = "kubeloop-cluster-store"
STORE_SECRET = "store-creds"
WRONG = "Wrong-Secret-Value"


@pytest.fixture(scope="module")
def source(s3: S3Server) -> str:
    """examples/data/breast-cancer.csv in three parts under a prefix; the prefix's URI."""
    s3.make_bucket(SOURCE_BUCKET)
    s3.make_bucket(STORE_BUCKET)
    frame = pd.read_csv(DATA)
    fs = s3.fs()
    for i, start in enumerate(range(0, len(frame), 200)):
        part = frame.iloc[start : start + 200].to_csv(index=False).encode()
        fs.pipe(f"{SOURCE_BUCKET}/breast-cancer/part-{i}.csv", part)
    return f"s3://{SOURCE_BUCKET}/breast-cancer/"


@pytest.fixture
def operator(kubeconfig: str, api_client: Any, namespace: str, s3: S3Server, tmp_path: Path):
    root = f"s3://{STORE_BUCKET}/{namespace}"
    proc = OperatorProcess(kubeconfig, namespace, root, tmp_path / "operator.log")
    proc.env.update({**s3.env(), "KUBELOOP_ARTIFACTS_SECRET": STORE_SECRET})
    with operating(proc, api_client) as running:
        yield running


def secret(name: str, values: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "stringData": values,
    }


def apply_example(cluster: Cluster, s3: S3Server, uri: str, **source_env: str) -> None:
    """The store's Secret, and the example's Secret (holding ``source_env``) and Dataset
    (reading ``uri``)."""
    example_secret, dataset = yaml.safe_load_all(EXAMPLE.read_text())
    example_secret["stringData"] = source_env
    dataset["spec"]["source"]["uri"] = uri
    cluster.apply(secret(STORE_SECRET, s3.env()))
    cluster.apply(example_secret)
    cluster.apply(dataset)


def play_kubelet(cluster: Cluster, selector: str, workdir: Path) -> tuple[int, str, dict]:
    """Run the Job matching ``selector`` here with the environment a kubelet would give it."""
    job = cluster.wait_job(selector)
    env = container_env(cluster.core, cluster.namespace, job)
    code, message = run_job_locally(job, workdir / job["metadata"]["name"], env)
    finish_pod(
        cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=code, message=message
    )
    return code, message, job


def training_job(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(
        datasetRef={"name": NAME},
        modelName="cancer",
        estimator={"className": "LogisticRegression", "params": {"max_iter": 3000}},
        gate={"min": {"accuracy": 0.8}},
    )
    doc["spec"].pop("resources")
    return doc


def assert_no_secret(cluster: Cluster, *texts: str) -> None:
    events = cluster.core.list_namespaced_event(cluster.namespace).items
    seen = [*texts, json.dumps(cluster.get("Dataset", NAME), default=str)]
    seen += [json.dumps(cluster.list("Job", "batch/v1"), default=str)]
    seen += [f"{e.reason} {e.message}" for e in events]
    for text in seen:
        assert SECRET_KEY not in text
        assert WRONG not in text


def test_s3_dataset_to_a_verified_model_in_an_s3_store(cluster, operator, s3, source, tmp_path):
    apply_example(cluster, s3, source, **s3.env())
    code, message, job = play_kubelet(cluster, f"kubeloop.io/dataset={NAME}", tmp_path)
    assert code == 0, message
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert refs[SOURCE_PREFIX + "AWS_SECRET_ACCESS_KEY"] == "cancer-s3"
    assert refs["AWS_SECRET_ACCESS_KEY"] == STORE_SECRET
    status = wait_for(
        lambda: cluster.status("Dataset", NAME).get("version") and cluster.status("Dataset", NAME),
        "the Dataset's first version",
    )
    assert status["version"] == digest_of(list(read_batches(str(DATA), "csv")))  # the local file's
    assert status["snapshotUri"].startswith(f"s3://{STORE_BUCKET}/{cluster.namespace}/datasets/")

    cluster.apply(training_job("cancer-s3-1"))
    code, message, _ = play_kubelet(cluster, "kubeloop.io/training-job=cancer-s3-1", tmp_path)
    assert code == 0, message
    tj = cluster.wait_phase("TrainingJob", "cancer-s3-1", "Succeeded")
    mv_name = tj["modelVersion"]
    mv = wait_for(
        lambda: (
            cluster.condition("ModelVersion", mv_name).get("status") == "True"
            and cluster.get("ModelVersion", mv_name)
        ),
        "the ModelVersion to be verified in S3",
        state=lambda: cluster.get("ModelVersion", mv_name),
    )
    assert mv["spec"]["artifact"]["uri"].startswith(f"s3://{STORE_BUCKET}/{cluster.namespace}/")
    assert cluster.condition("ModelVersion", mv_name, "Verified")["reason"] == "DigestMatches"
    assert_no_secret(cluster, message)


def test_a_wrong_source_secret_says_so_in_ready_without_the_secret(
    cluster, operator, s3, source, tmp_path
):
    apply_example(cluster, s3, source, **s3.env(secret=WRONG))
    code, message, _ = play_kubelet(cluster, f"kubeloop.io/dataset={NAME}", tmp_path)
    assert code == 2, message
    ready = wait_for(
        lambda: (
            cluster.condition("Dataset", NAME).get("reason") == "SnapshotFailed"
            and cluster.condition("Dataset", NAME)
        ),
        "the failed snapshot to show",
    )
    assert ready["status"] == "False"
    assert ready["message"].startswith(f"{source}: access denied: "), ready["message"]
    assert_no_secret(cluster, message)
