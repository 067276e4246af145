"""HTTPS: the key pair uvicorn serves with, and what the canary forwarder trusts; both
follow their files, so a renewed certificate needs no restart.

The operator mounts one kubernetes.io/tls Secret (``tls.crt``, ``tls.key``, and
``ca.crt`` when the issuer wrote one) into the stable *and* the canary pods, so
both present the same certificate. The forwarder therefore trusts, in order: the
CA bundle ``tls_ca_file`` when that file exists; else the server's own
``tls_cert_file``, which is the certificate the canary presents (a self-signed
certificate, or a Secret made with ``kubectl create secret tls`` and no CA); else
the system's trust store. Host names are always checked.

When cert-manager renews the certificate it rewrites the Secret and the kubelet the
mounted files; every ``tls_reload_interval`` the server compares their contents and
loads a changed key pair into its TLS context (new connections get it; open ones keep
theirs), and the forwarder adds a changed trust file to what it trusts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import uvicorn

from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")

#: background pollers, referenced so they are not collected while they run
_TASKS: set[asyncio.Task[None]] = set()


def digest(*paths: str) -> str | None:
    """sha256 of the files' contents together; None when one cannot be read."""
    h = hashlib.sha256()
    try:
        for path in paths:
            h.update(Path(path).read_bytes())
    except OSError:
        return None
    return h.hexdigest()


@dataclass
class Watched:
    """Files whose content is reloaded into an SSL context when it changes."""

    what: str
    paths: tuple[str, ...]
    load: Callable[[], None]
    seen: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.seen = digest(*self.paths)

    def poll(self) -> bool:
        """Load the files when their content changed since the last load; True when loaded.
        Unreadable or unloadable content is logged once and retried when it changes."""
        now = digest(*self.paths)
        if now is None or now == self.seen:
            return False
        self.seen = now
        try:
            self.load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "TLS: %s changed but was not loaded, keeping the old one: %s", self.what, exc
            )
            return False
        log.info("TLS: %s reloaded from %s", self.what, ", ".join(self.paths))
        return True


async def poll_every(interval: float, poll: Callable[[], object]) -> None:
    """Call ``poll`` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        poll()


def in_background(job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``job`` on the running loop, kept referenced until it ends."""
    task = asyncio.get_running_loop().create_task(job)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


def load_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load a key pair into a live ``context`` only once it proved good on a scratch one: a
    failed ``load_cert_chain`` may leave a context holding the new certificate with the
    old key. The checked bytes are what is loaded (copies in a private folder)."""
    with tempfile.TemporaryDirectory(prefix="kubeloop-tls-") as folder:
        cert, key = Path(folder, "tls.crt"), Path(folder, "tls.key")
        cert.write_bytes(Path(cert_file).read_bytes())
        key.write_bytes(Path(key_file).read_bytes())
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        context.load_cert_chain(cert, key)


@dataclass(frozen=True)
class ReloadingContext:
    """uvicorn's ``ssl_context_factory``: its default context, kept on the newest key pair.

    Called by each server process as it starts, on its event loop; picklable, as
    worker processes receive the config."""

    cert_file: str
    key_file: str
    interval: float

    def __call__(
        self, config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context = default()
        pair = Watched(
            "key pair",
            (self.cert_file, self.key_file),
            lambda: load_pair(context, self.cert_file, self.key_file),
        )
        try:
            asyncio.get_running_loop()  # uvicorn loads its config on the server's loop
        except RuntimeError:
            log.warning("TLS: no event loop; %s will not be reloaded", self.cert_file)
            return context
        in_background(poll_every(self.interval, pair.poll))
        return context


class SSLOptions(TypedDict):
    """uvicorn's HTTPS arguments (all None: plain HTTP)."""

    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_context_factory: ReloadingContext | None


def ssl_options(settings: ServingSettings) -> SSLOptions:
    """The key pair uvicorn serves HTTPS with (the settings checked both are readable)."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        return {"ssl_certfile": None, "ssl_keyfile": None, "ssl_context_factory": None}
    factory = ReloadingContext(cert, key, settings.tls_reload_interval)
    return {"ssl_certfile": cert, "ssl_keyfile": key, "ssl_context_factory": factory}


def trust_file(settings: ServingSettings) -> str | None:
    """The PEM file the forwarder verifies the canary with (None: the system's store)."""
    ca = settings.tls_ca_file
    if ca is not None and Path(ca).is_file():
        return ca
    return settings.tls_cert_file


@dataclass
class CanaryTrust:
    """httpx's ``verify`` for requests to the canary, and the poller that keeps it current
    (a changed trust file is added: connections to a canary still on the old certificate
    keep verifying)."""

    verify: ssl.SSLContext | bool
    watched: Watched | None

    @classmethod
    def of(cls, settings: ServingSettings) -> CanaryTrust:
        trusted = trust_file(settings)
        if trusted is None:
            return cls(True, None)
        context = ssl.create_default_context(cafile=trusted)
        # the server's own certificate (or an intermediate) may be the trust anchor
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if trusted != settings.tls_ca_file:
            log.info("canary TLS: no CA file; trusting the server's own certificate %s", trusted)
        watched = Watched(
            "canary trust", (trusted,), lambda: context.load_verify_locations(cafile=trusted)
        )
        return cls(context, watched)
