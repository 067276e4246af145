"""HTTPS: the server's key pair is checked before uvicorn loads it; the canary forwarder's trust.

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

from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")


def check_files(settings: ServingSettings) -> None:
    """Raise ValueError naming the setting whose file cannot be read."""
    for name in ("tls_cert_file", "tls_key_file"):
        path = getattr(settings, name)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{name}: cannot read {path}: {exc.strerror}") from None


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
