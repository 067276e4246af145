"""HTTPS: the key pair uvicorn serves with, and what the canary forwarder trusts.

The operator mounts one kubernetes.io/tls Secret (``tls.crt``, ``tls.key``, and
``ca.crt`` when the issuer wrote one) into the stable *and* the canary pods, so
both present the same certificate. The forwarder therefore trusts, in order: the
CA bundle ``tls_ca_file`` when that file exists; else the server's own
``tls_cert_file``, which is the certificate the canary presents (a self-signed
certificate, or a Secret made with ``kubectl create secret tls`` and no CA); else
the system's trust store. Host names are always checked.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TypedDict

from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")


class SSLFiles(TypedDict):
    """uvicorn's key-pair arguments (both None: plain HTTP)."""

    ssl_certfile: str | None
    ssl_keyfile: str | None


def ssl_files(settings: ServingSettings) -> SSLFiles:
    """The key pair uvicorn serves HTTPS with (settings check both are readable)."""
    return {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}


def trust_file(settings: ServingSettings) -> str | None:
    """The PEM file the forwarder verifies the canary with (None: the system's store)."""
    ca = settings.tls_ca_file
    if ca is not None and Path(ca).is_file():
        return ca
    return settings.tls_cert_file


def canary_verify(settings: ServingSettings) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for requests to the canary."""
    trusted = trust_file(settings)
    if trusted is None:
        return True
    context = ssl.create_default_context(cafile=trusted)
    # the server's own certificate (or an intermediate) may be the trust anchor
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if trusted != settings.tls_ca_file:
        log.info("canary TLS: no CA file; trusting the server's own certificate %s", trusted)
    return context
