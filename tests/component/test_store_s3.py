"""The operator's artifact checks (kubeloop.operator.store) on an S3 store, a real server
(tests/s3_server.py), with the credentials in the standard variables as the chart gives
them to the operator; and on an Azure Blob emulator (tests/azure_server.py), whose
refusals the driver passes on as the SDK's own errors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import s3fs

from azure_server import KEY, OTHER_KEY, AzuriteServer
from kubeloop.contracts import storage
from kubeloop.operator.store import StoreUnavailableError, read_json, sha256_of
from s3_server import SECRET_KEY, S3Server

BODY = b'{"name": "cancer", "rows": 569}' * 40_000  # over one read chunk


@pytest.fixture
def store_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The server's variables in this process, fresh filesystems before and after."""

    def use(env: dict[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        storage.honour_standard_env()
        s3fs.S3FileSystem.clear_instance_cache()  # credentials are read when one is made

    use(s3.env())
    yield s3.env()
    s3fs.S3FileSystem.clear_instance_cache()


def test_hashes_and_reads_artifacts_in_s3(s3, store_env):
    bucket = s3.make_bucket("kubeloop-verify")
    s3.fs().pipe(f"{bucket.removeprefix('s3://')}/m/model.json", BODY[:31])
    s3.fs().pipe(f"{bucket.removeprefix('s3://')}/m/model.onnx", BODY)
    assert sha256_of(f"{bucket}/m/model.onnx") == hashlib.sha256(BODY).hexdigest()
    assert read_json(f"{bucket}/m/model.json") == {"name": "cancer", "rows": 569}
    with pytest.raises(FileNotFoundError):
        sha256_of(f"{bucket}/m/missing.onnx")


def test_wrong_credentials_are_an_error_without_the_secret(s3, monkeypatch):
    bucket = s3.make_bucket("kubeloop-verify")
    s3.fs().pipe(f"{bucket.removeprefix('s3://')}/m/model.onnx", BODY)
    for key, value in s3.env(secret="Wrong-Secret-Value").items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(PermissionError) as err:
            sha256_of(f"{bucket}/m/model.onnx")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert "Wrong-Secret-Value" not in str(err.value)
    assert SECRET_KEY not in str(err.value)


def test_azure_artifacts_and_a_refused_key(azure: AzuriteServer, monkeypatch):
    import adlfs

    container = azure.make_container("kubeloop-az-verify")
    azure.fs().pipe(f"{container.removeprefix('az://')}/m/model.onnx", BODY)
    uri = f"{container}/m/model.onnx"
    for key, expect_ok in ((KEY, True), (OTHER_KEY, False)):
        for name, value in azure.env(key=key).items():
            monkeypatch.setenv(name, value)
        adlfs.AzureBlobFileSystem.clear_instance_cache()
        try:
            if expect_ok:
                assert sha256_of(uri) == hashlib.sha256(BODY).hexdigest()
                continue
            with pytest.raises(StoreUnavailableError) as err:
                sha256_of(uri)
            assert str(err.value).startswith(f"{uri}: ")
            assert KEY not in str(err.value)
            assert OTHER_KEY not in str(err.value)
            assert read_json(f"{container}/m/model.json") is None
        finally:
            adlfs.AzureBlobFileSystem.clear_instance_cache()
