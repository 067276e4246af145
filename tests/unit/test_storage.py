"""Object-store credentials: the env entries pods get, and the options a source reads with."""

from __future__ import annotations

from kubeloop.contracts import storage
from kubeloop.contracts.storage import CREDENTIAL_KEYS, SOURCE_PREFIX


def test_secret_env_takes_every_standard_key_optionally():
    env = storage.secret_env("store-creds")
    assert [e["name"] for e in env] == list(CREDENTIAL_KEYS)
    for entry in env:
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "store-creds", "key": entry["name"], "optional": True}
    assert all("value" not in e for e in env)  # references only: the operator never reads one
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL"):
        assert key in CREDENTIAL_KEYS


def test_secret_env_with_a_prefix_keeps_the_secret_keys():
    env = storage.secret_env("src", prefix=SOURCE_PREFIX)
    assert env[0]["name"] == SOURCE_PREFIX + "AWS_ACCESS_KEY_ID"
    assert env[0]["valueFrom"]["secretKeyRef"]["key"] == "AWS_ACCESS_KEY_ID"


def test_no_secret_means_ambient_identity():
    assert storage.secret_env(None) == []
    assert storage.secret_env("") == []


def test_aws_region_reaches_botocore():
    env = {"AWS_REGION": "eu-west-1"}
    storage.honour_standard_env(env)
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    env = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-2"}
    storage.honour_standard_env(env)
    assert env["AWS_DEFAULT_REGION"] == "us-east-2"  # an explicit default is kept
    env = {}
    storage.honour_standard_env(env)
    assert env == {}


def test_source_options_for_s3_from_the_prefixed_variables():
    env = {
        SOURCE_PREFIX + "AWS_ACCESS_KEY_ID": "id",
        SOURCE_PREFIX + "AWS_SECRET_ACCESS_KEY": "sk",
        SOURCE_PREFIX + "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        SOURCE_PREFIX + "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "store-id",
    }
    assert storage.source_options("s3://bucket/data.csv", env) == {
        "key": "id",
        "secret": "sk",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    }


def test_a_source_without_its_own_endpoint_ignores_the_stores():
    env = {
        SOURCE_PREFIX + "AWS_ACCESS_KEY_ID": "id",
        SOURCE_PREFIX + "AWS_SECRET_ACCESS_KEY": "sk",
        "AWS_ENDPOINT_URL": "http://store.example:9000",
    }
    assert storage.source_options("s3://bucket/data.csv", env) == {
        "key": "id",
        "secret": "sk",
        "config_kwargs": {"ignore_configured_endpoint_urls": True},
    }


def test_source_options_for_azure_and_none_elsewhere():
    env = {
        SOURCE_PREFIX + "AZURE_STORAGE_ACCOUNT_NAME": "acct",
        SOURCE_PREFIX + "AZURE_STORAGE_SAS_TOKEN": "tok",
    }
    assert storage.source_options("az://container/x.csv", env) == {
        "account_name": "acct",
        "sas_token": "tok",
    }
    assert storage.source_options("abfs://container/x.csv", env)["account_name"] == "acct"
    assert storage.source_options("/data/x.csv", env) == {}
    assert storage.source_options("gs://b/x.csv", env) == {}
    assert storage.source_options("s3://b/x.csv", {"AWS_ACCESS_KEY_ID": "standard"}) == {}
