"""A Dataset read from a real PostgreSQL server, through the real operator and API server.

The operator writes the snapshot Job; the test plays the kubelet (kwok runs no
containers): it resolves the container's environment as a kubelet would, reading
the Secret the ``secretKeyRef`` names, and runs the Job's real command here
against the server of the ``postgres`` fixture (tests/postgres.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
import yaml
from kubelet import finish_pod, wait_running
from operator_harness import (
    Cluster,
    container_env,
    pod_of,
    run_job_locally,
    wait_for,
)

from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.results import SOURCE_URL_ENV
from postgres import PASSWORD, PostgresServer

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dataset-postgresql.yaml"
NAME = "tumours"


@pytest.fixture(scope="module")
def tumours(postgres: PostgresServer) -> int:
    """The example's table, from examples/data/breast-cancer.csv; its reviewed rows."""
    frame = pd.read_csv(ROOT / "examples" / "data" / "breast-cancer.csv")
    postgres.execute(
        "DROP TABLE IF EXISTS tumours",
        "CREATE TABLE tumours (radius float8, texture float8, perimeter float8, area float8, "
        "smoothness float8, target int, reviewed bool)",
    )
    columns = ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness"]
    with (
        psycopg.connect(postgres.url(password=True)) as conn,
        conn.cursor().copy(b"COPY tumours FROM STDIN") as copy,
    ):
        for i, row in enumerate(frame[[*columns, "target"]].itertuples(index=False)):
            copy.write_row([*row, i % 10 != 0])
    return sum(1 for i in range(len(frame)) if i % 10 != 0)


def apply_example(cluster: Cluster, url: str, name: str = NAME) -> dict[str, Any]:
    """The example's Secret (holding ``url``) and Dataset, named ``name``; the Dataset."""
    secret, dataset = yaml.safe_load_all(EXAMPLE.read_text())
    secret["metadata"]["name"] = f"{name}-db"
    secret["stringData"]["url"] = url
    dataset["metadata"]["name"] = name
    dataset["spec"]["source"]["sql"]["urlSecretRef"]["name"] = f"{name}-db"
    dataset["spec"].pop("refreshInterval")
    cluster.apply(secret)
    return cluster.apply(dataset)


def snapshot_job(cluster: Cluster, name: str, generation: int) -> dict[str, Any]:
    return wait_for(
        lambda: next(
            (
                j
                for j in cluster.list("Job", "batch/v1", f"kubeloop.io/dataset={name}")
                if f"-snap-g{generation}-" in j["metadata"]["name"]
            ),
            None,
        ),
        f"the snapshot Job of generation {generation}",
    )


def play_kubelet(cluster: Cluster, job: dict[str, Any], workdir: Path) -> tuple[int, str]:
    """Run the Job here with the environment a kubelet would give it; finish its pod."""
    env = container_env(cluster.core, cluster.namespace, job)
    code, message = run_job_locally(job, workdir / job["metadata"]["name"], env)
    pod = pod_of(cluster, job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=code, message=message)
    return code, message


def assert_no_secret(cluster: Cluster, *texts: str) -> None:
    """Neither the password nor the URL shows in ``texts``, the Dataset or any event."""
    events = cluster.core.list_namespaced_event(cluster.namespace).items
    seen = [*texts, json.dumps(cluster.get("Dataset", NAME), default=str)]
    seen += [f"{e.reason} {e.message}" for e in events]
    for text in seen:
        assert PASSWORD not in text
        assert f"kubeloop:{PASSWORD}@" not in text


def test_snapshot_job_reads_the_url_from_the_secret_and_keeps_the_last_version(
    cluster, operator, postgres, tumours, tmp_path
):
    apply_example(cluster, postgres.url(password=True))
    job = snapshot_job(cluster, NAME, 1)
    container = job["spec"]["template"]["spec"]["containers"][0]
    ref = {"name": f"{NAME}-db", "key": "url"}
    assert {"name": SOURCE_URL_ENV, "valueFrom": {"secretKeyRef": ref}} in container["env"]
    assert "--source" not in container["args"]
    assert [a for a in container["args"] if "postgresql" in a] == []
    assert container["args"][container["args"].index("--format") + 1] == "parquet"
    code, message = play_kubelet(cluster, job, tmp_path)
    assert code == 0, message
    status = wait_for(
        lambda: cluster.status("Dataset", NAME).get("version") and cluster.status("Dataset", NAME),
        "the Dataset's first version",
    )
    assert status["rows"] == tumours
    assert status["snapshotUri"].endswith("/" + ArtifactLayout.data_file("parquet"))
    first = status["version"]

    # a query that fails: one line naming the source and the cause; the version stays
    cluster.patch("Dataset", NAME, {"spec": {"source": {"sql": {"query": "SELECT * FROM gone"}}}})
    code, message = play_kubelet(cluster, snapshot_job(cluster, NAME, 2), tmp_path)
    assert code == 2, message
    ready = wait_for(
        lambda: (
            cluster.condition("Dataset", NAME).get("reason") == "SnapshotFailed"
            and cluster.condition("Dataset", NAME)
        ),
        "the failed snapshot to show",
    )
    source = f"postgresql://kubeloop@127.0.0.1:{postgres.port}/kubeloop"
    assert ready["message"] == f'{source}: query failed: relation "gone" does not exist'
    assert ready["status"] == "True"
    assert cluster.status("Dataset", NAME)["version"] == first
    assert_no_secret(cluster, message, json.dumps(cluster.list("Job", "batch/v1")))


def test_a_wrong_password_says_so_in_ready_without_the_password(
    cluster, operator, postgres, tumours, tmp_path
):
    apply_example(cluster, postgres.url(password=True).replace(PASSWORD, "not-the-password"))
    code, message = play_kubelet(cluster, snapshot_job(cluster, NAME, 1), tmp_path)
    assert code == 2, message
    ready = wait_for(
        lambda: (
            cluster.condition("Dataset", NAME).get("reason") == "SnapshotFailed"
            and cluster.condition("Dataset", NAME)
        ),
        "the failed snapshot to show",
    )
    assert ready["status"] == "False"
    assert ready["message"].startswith(f"postgresql://kubeloop@127.0.0.1:{postgres.port}/")
    assert 'password authentication failed for user "kubeloop"' in ready["message"]
    assert "not-the-password" not in ready["message"]
    assert_no_secret(cluster, message)


def cannot_start(cluster: Cluster, job: dict[str, Any], reason: str, message: str) -> None:
    """Report the Job's pod as a kubelet does when it cannot make the container's
    environment: Pending, the container waiting with ``reason`` and ``message``."""
    pod = pod_of(cluster, job["metadata"]["name"])
    name = pod["metadata"]["name"]
    current = wait_running(cluster.core, name, cluster.namespace)
    waiting = {"waiting": {"reason": reason, "message": message}}
    statuses = [
        {"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
         "started": False, "state": waiting}
        for c in current.spec.containers
    ]  # fmt: skip
    body = {"status": {"phase": "Pending", "containerStatuses": statuses}}
    cluster.core.patch_namespaced_pod_status(
        name, cluster.namespace, body, _content_type="application/merge-patch+json"
    )


def test_a_missing_secret_shows_in_ready(cluster, operator, tmp_path):
    apply_example(cluster, "unused")
    cluster.core.delete_namespaced_secret(f"{NAME}-db", cluster.namespace)
    job = snapshot_job(cluster, NAME, 1)
    cannot_start(cluster, job, "CreateContainerConfigError", f'secret "{NAME}-db" not found')
    ready = wait_for(
        lambda: (
            cluster.condition("Dataset", NAME).get("reason") == "SnapshotBlocked"
            and cluster.condition("Dataset", NAME)
        ),
        "Ready to say why the snapshot cannot start",
        state=lambda: cluster.condition("Dataset", NAME),
    )
    assert ready["status"] == "False"
    assert ready["message"] == (
        f"Job {job['metadata']['name']} cannot start its pod: "
        f'CreateContainerConfigError: secret "{NAME}-db" not found'
    )
