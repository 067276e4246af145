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
