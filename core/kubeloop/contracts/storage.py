"""Object-store credentials: which environment variables carry them, and how.

Credentials reach every process as the standard environment variables of each
cloud's SDK, never as arguments, status fields or annotations: the operator turns
a Secret into ``secretKeyRef`` variables (each key optional, so a Secret may hold
only those it needs), and with no Secret the drivers fall back to the ambient
identity (instance profile, workload identity). The artifact store's credentials
use the standard names; a Dataset source's own Secret uses the same names behind
:data:`SOURCE_PREFIX`, so a snapshot Job can read a source in one account and
write the store in another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

#: S3 (s3fs through botocore): keys, session token, region, endpoint of any S3 server.
AWS_KEYS: Final = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)
#: Azure Blob / ADLS Gen2 (adlfs reads these itself).
AZURE_KEYS: Final = (
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
)
#: Google Cloud Storage: the project; credentials are the ambient (workload) identity.
GCS_KEYS: Final = ("GOOGLE_CLOUD_PROJECT",)
#: Every variable a credentials Secret may hold, in the order pods list them.
CREDENTIAL_KEYS: Final = (*AWS_KEYS, *AZURE_KEYS, *GCS_KEYS)
#: A Dataset source's credentials: the standard names behind this prefix.
SOURCE_PREFIX: Final = "KUBELOOP_SOURCE_"

#: fsspec storage options of a source, per protocol: option -> standard variable.
_S3_OPTIONS: Final = {
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
}
_S3_CLIENT: Final = {"endpoint_url": "AWS_ENDPOINT_URL", "region_name": "AWS_REGION"}
_AZURE_OPTIONS: Final = {
    "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
    "account_key": "AZURE_STORAGE_ACCOUNT_KEY",
    "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
    "sas_token": "AZURE_STORAGE_SAS_TOKEN",
    "client_id": "AZURE_STORAGE_CLIENT_ID",
    "client_secret": "AZURE_STORAGE_CLIENT_SECRET",
    "tenant_id": "AZURE_STORAGE_TENANT_ID",
}


#: SDKs whose errors some fsspec drivers pass on as they are (adlfs: azure-core's
#: HttpResponseError on a refused key) rather than as OSError.
STORE_SDKS: Final = frozenset({"azure", "google", "botocore", "aiobotocore", "aiohttp"})


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an object store's SDK saying no (to be reported, not crash on)."""
    return type(exc).__module__.split(".")[0] in STORE_SDKS


def secret_env(secret: str | None, prefix: str = "") -> list[dict[str, Any]]:
    """Container ``env`` entries taking every credential key from ``secret`` (each
    optional); none without a Secret, so the pod uses its ambient identity."""
    if not secret:
        return []
    return [
        {
            "name": prefix + key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for key in CREDENTIAL_KEYS
    ]


def honour_standard_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Make botocore read ``AWS_REGION`` (it reads only ``AWS_DEFAULT_REGION``).

    ``AWS_ENDPOINT_URL`` and the keys it honours itself. Called once when the
    command line starts, so every command and every filesystem sees the same."""
    env = os.environ if environ is None else environ
    if env.get("AWS_REGION") and not env.get("AWS_DEFAULT_REGION"):
        env["AWS_DEFAULT_REGION"] = env["AWS_REGION"]


def source_options(uri: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec storage options for reading ``uri`` with a source's own credentials
    (:data:`SOURCE_PREFIX` variables); empty when there are none, so the standard
    variables or the ambient identity apply."""
    env = os.environ if environ is None else environ
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"

    def given(table: Mapping[str, str]) -> dict[str, str]:
        return {
            opt: env[SOURCE_PREFIX + var]
            for opt, var in table.items()
            if env.get(SOURCE_PREFIX + var)
        }

    if protocol in ("s3", "s3a"):
        options: dict[str, Any] = given(_S3_OPTIONS)
        client = given(_S3_CLIENT)
        if client:
            options["client_kwargs"] = client
        if options and "endpoint_url" not in client:
            # Its own credentials without an endpoint: AWS itself, not the store's
            # AWS_ENDPOINT_URL, which botocore would otherwise take from the environment.
            options["config_kwargs"] = {"ignore_configured_endpoint_urls": True}
        return options
    if protocol in ("az", "abfs", "abfss"):
        return given(_AZURE_OPTIONS)
    return {}
