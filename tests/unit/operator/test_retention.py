"""Registry retention: which versions and folders go, and the cleanup Job."""

from __future__ import annotations

from typing import Any

from kubeloop.operator import retention
from kubeloop.operator.settings import OperatorSettings

PREFIX = "s3://store/models/ml/"


def mv(version: int, folder: str | None = None, **labels: str) -> dict[str, Any]:
    uri = f"{folder or f'{PREFIX}run-{version}'}/model.onnx"
    return {
        "metadata": {"name": f"m-v{version}", "labels": labels},
        "spec": {"version": version, "artifact": {"uri": uri, "sha256": "0" * 64}},
    }


def test_the_newest_n_stay_and_the_older_go_with_their_folders():
    pruning = retention.prune([mv(v) for v in (3, 1, 4, 2, 5)], 2, set(), "web", PREFIX)
    assert pruning.versions == ("m-v1", "m-v2", "m-v3")
    assert pruning.folders == tuple(f"{PREFIX}run-{v}" for v in (1, 2, 3))


def test_served_pinned_and_other_deployments_versions_stay():
    versions = [
        mv(1),  # pinned by this deployment
        mv(2, **{"served-by.kubeloop.io/other": "stable"}),  # another deployment's
        mv(3, **{"served-by.kubeloop.io/web": "shadow"}),  # ours: protected by name below
        mv(4),
        mv(5),
    ]
    pruning = retention.prune(versions, 1, {"m-v1", "m-v3"}, "web", PREFIX)
    assert pruning.versions == ("m-v4",)


def test_a_folder_a_kept_version_shares_or_outside_the_prefix_is_left():
    shared = f"{PREFIX}registered/abc"
    versions = [mv(1, shared), mv(2, "file:///elsewhere/m"), mv(3, shared), mv(4)]
    pruning = retention.prune(versions, 2, set(), "web", PREFIX)
    assert pruning.versions == ("m-v1", "m-v2")
    assert pruning.folders == ()  # v1's folder is v3's too; v2's is not the store's


def test_nothing_to_prune_under_the_limit():
    assert retention.prune([mv(1), mv(2)], 5, set(), "web", PREFIX).versions == ()


def test_the_cleanup_job_is_named_by_its_folders_and_bounded_to_the_prefix():
    settings = OperatorSettings(artifact_root="s3://store")
    md = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "web", "namespace": "ml", "uid": "u-1"},
    }
    folders = (f"{PREFIX}run-1", f"{PREFIX}run-2")
    job = retention.cleanup_job(md, folders, settings)
    again = retention.cleanup_job(md, folders, settings)
    other = retention.cleanup_job(md, folders[:1], settings)
    assert job["metadata"]["name"] == again["metadata"]["name"] != other["metadata"]["name"]
    assert job["metadata"]["name"].startswith("web-gc-")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["gc-artifacts", "--under", PREFIX, *folders]
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600


DATA = "s3://store/datasets/ml/cancer/"


def snap(n: int) -> dict[str, Any]:
    return {"version": f"sha256-v2:{n:064x}", "rows": 1, "snapshotUri": f"{DATA}v2-{n}/data.csv"}


def test_snapshots_past_the_limit_go_unless_a_version_was_trained_on_them():
    history = [snap(n) for n in (5, 4, 3, 2, 1)]  # newest first
    kept, folders = retention.prune_snapshots(history, 2, {snap(2)["version"]}, DATA)
    assert [h["version"] for h in kept] == [snap(n)["version"] for n in (5, 4, 2)]
    assert folders == (f"{DATA}v2-1", f"{DATA}v2-3")


def test_a_snapshot_outside_the_datasets_folder_is_left_in_the_store():
    outside = {**snap(1), "snapshotUri": "s3://elsewhere/data.csv"}
    kept, folders = retention.prune_snapshots([snap(2), outside], 1, set(), DATA)
    assert kept == [snap(2)]
    assert folders == ()


def test_a_dataset_cleanup_job_is_bounded_to_its_own_folder():
    settings = OperatorSettings(artifact_root="s3://store")
    ds = {"apiVersion": "kubeloop.io/v1alpha1", "kind": "Dataset",
          "metadata": {"name": "cancer", "namespace": "ml", "uid": "u-2"}}  # fmt: skip
    prefix = retention.datasets_prefix(settings, "ml", "cancer")
    assert prefix == DATA
    job = retention.cleanup_job(ds, (f"{DATA}v2-1",), settings, prefix)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["gc-artifacts", "--under", DATA, f"{DATA}v2-1"]
    assert job["metadata"]["labels"][retention.GC_FOR_LABEL] == "cancer"
