"""kopf wiring: persistence under ``kubeloop.io``, the shared context, metrics, the CLI.

Importing this module registers every handler (one module per kind).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import zlib
from typing import Any

import click
import kopf
from prometheus_client import start_http_server

from kubeloop.operator import builders, metrics
from kubeloop.operator.alerts import receiver
from kubeloop.operator.children import WATCHED
from kubeloop.operator.handlers import (  # noqa: F401  (registers the handlers)
    batchprediction,
    dataset,
    modeldeployment,
    modelversion,
    schedule,
    trainingjob,
    watch,
)
from kubeloop.operator.handlers.common import KOPF_PREFIX, Context, context
from kubeloop.operator.kube import Kube
from kubeloop.operator.settings import OperatorSettings


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's own bookkeeping under our prefix and build the shared context once."""
    # A prefix of kopf's own: kopf leaves every annotation under its storage prefix out of
    # what it compares, so under ``kubeloop.io`` the requests users and the operator write
    # there (promote, abort, snapshot-requested) woke no handler until the next resync.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = "kubeloop.io/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # kopf retries a failed request (a watch, too) after 1, 1, 2, 3, 5, 8, 13, 21 s: after
    # an API server outage of 20 s its watches came back 11 s after the API server did.
    # About the same window before giving up, but never more than 3 s between tries.
    settings.networking.error_backoffs = (1, 1, 2, 2, *[3] * 16)
    # reconciles wait on the API server most of the time, and event-driven ones (a child
    # changed) share the pool with kopf's handlers: enough threads to keep both moving
    settings.execution.max_workers = 32
    operator_settings = OperatorSettings()
    # a killed leader's record lingers this long: kopf's 60 s default is the handover time
    settings.peering.lifetime = operator_settings.peering_lifetime_seconds
    watch_own_children_only(settings)
    ctx = Context(settings=operator_settings, kube=Kube())
    ctx.versions.active = ctx.datasets.active = True  # fed by their watches (handlers.watch)
    memo["ctx"] = ctx
    metrics.zero_series()
    if operator_settings.metrics_port:
        start_http_server(operator_settings.metrics_port)


def watch_own_children_only(settings: kopf.OperatorSettings) -> None:
    """Have the API server filter the child kinds' watches by the operator's label.

    kopf applies a handler's ``labels=`` filter in the client: every ConfigMap, Deployment,
    Service… of a watched namespace would stream through the operator (10,000 unrelated
    ones kept it from starting within two minutes), although it only ever looks at its own.
    """
    selector = f"{builders.MANAGED_BY_LABEL}={builders.MANAGED_BY}"
    for group, version, plural, *_ in WATCHED:
        settings.watching.label_selectors[group, version, plural] = selector


@kopf.on.startup()
async def start_alert_receiver(memo: kopf.Memo, **_: Any) -> None:
    """The Alertmanager webhook receiver (after ``configure``, which builds the context)."""
    await receiver.start(context(memo), memo)


@kopf.on.cleanup()
async def stop_alert_receiver(memo: kopf.Memo, **_: Any) -> None:
    await receiver.stop(memo)


def peering_priority(value: str, identity: str) -> int:
    """kopf peering priority: an integer, or ``auto`` for one derived from the identity.

    kopf pauses an operator while a live peer has a higher priority, and pauses all of
    them while peers share one. ``auto`` gives each replica of a Deployment its own stable
    priority (from its pod name), so the highest one reconciles and the others stand by
    until it is gone.
    """
    if value == "auto":
        return zlib.crc32(identity.encode()) % 1_000_000 + 1
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an integer nor 'auto'") from None


@click.command("operator")
@click.option(
    "--namespace", "-n", "namespaces", multiple=True, help="Namespace to watch (repeatable)."
)
@click.option("--all-namespaces", "-A", is_flag=True, help="Watch every namespace.")
@click.option(
    "--liveness",
    default="http://0.0.0.0:8081/healthz",
    show_default=True,
    help="Liveness endpoint URL ('' to disable).",
)
@click.option(
    "--standalone/--peering", default=True, help="Run without kopf peering (one replica)."
)
@click.option(
    "--priority",
    default="0",
    show_default=True,
    help="kopf peering priority: an integer, or 'auto' (stable, from POD_ID or the host name).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def operator(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    liveness: str,
    standalone: bool,
    priority: str,
    verbose: bool,
) -> None:
    """Run the Kubeloop operator against the current cluster (in-cluster or kubeconfig)."""
    if not namespaces and not all_namespaces:
        raise click.UsageError("pass --namespace NS (repeatable) or --all-namespaces")
    if namespaces and all_namespaces:
        raise click.UsageError("--namespace and --all-namespaces exclude each other")
    prio = peering_priority(priority, os.environ.get("POD_ID") or socket.gethostname())
    # kopf reports every timer run at INFO; keep that for --verbose.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # the canary analysis' Prometheus queries: one line each at INFO; keep them for --verbose.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(
        kopf.operator(
            clusterwide=all_namespaces,
            namespaces=list(namespaces),
            standalone=standalone,
            priority=prio,
            liveness_endpoint=liveness or None,
            # the alert receiver acts only on ModelDeployments in these namespaces
            memo=kopf.Memo(watched_namespaces=tuple(namespaces)),
        )
    )
