"""``kubeloop status [MODEL]``: the loop of a model, read from the API server (and the live
drift from Prometheus when given one), as tables, JSON or YAML; ``--watch`` follows it.

Also a kubectl plugin: the ``kubectl-kubeloop`` script is the same command line, so
``kubectl kubeloop status`` works once it is on the PATH.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click
import httpx
import yaml
from kubernetes import client
from kubernetes.config.config_exception import ConfigException
from rich.console import Console, Group, RenderableType
from rich.live import Live

from kubeloop.api.base import GROUP, VERSION
from kubeloop.operator.kube import user_config
from kubeloop.operator.loopview import FeatureDrift, ModelLoop, Objects, build, models_in, render
from kubeloop.operator.prometheus import parse_vector

PLURALS = ("datasets", "trainingjobs", "modelversions", "modeldeployments")
#: Table width when the output is not a terminal (and COLUMNS does not say).
PIPED_WIDTH = 160


def api_client(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """A client for the kubeconfig (or the pod's service account) and its namespace."""
    try:
        api, namespace = user_config(kubeconfig, context)
    except ConfigException as exc:
        raise click.ClickException(
            f"no cluster to read: {exc} (set KUBECONFIG or --kubeconfig, or run in a pod)"
        ) from exc
    return api, namespace or "default"


def read_objects(api: client.ApiClient, namespace: str) -> Objects:
    """The four kinds in ``namespace``; a missing CRD says what to install."""
    custom = client.CustomObjectsApi(api)
    found: dict[str, list[dict[str, Any]]] = {}
    for plural in PLURALS:
        try:
            answer = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        except client.ApiException as exc:
            if exc.status == 404:
                raise click.ClickException(
                    f"{plural}.{GROUP} is not installed in this cluster (helm install kubeloop, "
                    "docs/install.md)"
                ) from exc
            raise click.ClickException(f"listing {plural}: {exc.status} {exc.reason}") from exc
        found[plural] = list(answer.get("items") or []) if isinstance(answer, dict) else []
    return Objects(**found)


def read_drift(
    url: str, namespace: str, deployments: list[str], timeout: float = 5.0
) -> tuple[list[FeatureDrift], str | None]:
    """Per-feature drift of each deployment's stable pods, and its threshold; or a note
    saying why there is none (never an error: Prometheus is optional)."""
    out: list[FeatureDrift] = []
    for md in deployments:
        selector = f'namespace="{namespace}",model_deployment="{md}",role="stable"'
        try:
            scores = _query(
                url, f"max by (feature) (kubeloop_feature_drift{{{selector}}})", "feature", timeout
            )
            limits = _query(url, f"max(kubeloop_drift_threshold{{{selector}}})", "", timeout)
        except (httpx.HTTPError, ValueError) as exc:
            return [], f"Prometheus at {url} did not answer ({exc})"
        threshold = limits.get("")
        out += [
            FeatureDrift(deployment=md, feature=f, score=v, threshold=threshold)
            for f, v in scores.items()
        ]
    return out, None if out else "no drift series yet (no traffic, or not scraped)"


def _query(url: str, promql: str, by: str, timeout: float) -> dict[str, float]:
    answer = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=timeout)
    answer.raise_for_status()
    return parse_vector(answer.json(), by)


def snapshot(
    api: client.ApiClient, namespace: str, model: str | None, prometheus: str | None, limit: int
) -> list[ModelLoop]:
    """The loops of ``model`` (or of every model in the namespace), read now."""
    objects = read_objects(api, namespace)
    models = [model] if model else models_in(objects)
    loops = []
    for name in models:
        deployments = [
            o["metadata"]["name"]
            for o in objects.modeldeployments
            if o["spec"].get("modelName") == name
        ]
        drift, note = (
            read_drift(prometheus, namespace, deployments)
            if prometheus
            else ([], "not read (give --prometheus URL)")
        )
        loops.append(build(name, namespace, objects, drift, note, limit))
    return loops


def dump(loops: list[ModelLoop], output: str) -> str:
    """JSON or YAML of the loops (one object per model) for scripts."""
    data = [loop.model_dump(mode="json") for loop in loops]
    return json.dumps(data, indent=2) if output == "json" else yaml.safe_dump(data, sort_keys=False)


def view(loops: list[ModelLoop], model: str | None, namespace: str) -> RenderableType:
    if not loops:
        return f"no Kubeloop models in namespace {namespace}" + (f" named {model}" if model else "")
    return Group(*(render(loop) for loop in loops))


@click.command("status")
@click.argument("model", required=False)
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig context's).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig file.")
@click.option("--context", "kube_context", help="Kubeconfig context.")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option("--prometheus", metavar="URL", help="Read the live drift from this Prometheus.")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=10, show_default=True, help="Rows per list."
)
@click.option("-w", "--watch", is_flag=True, help="Redraw every --interval seconds (Ctrl-C stops).")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True)
def status(
    model: str | None,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    output: str,
    prometheus: str | None,
    limit: int,
    watch: bool,
    interval: float,
) -> None:
    """Show a model's loop: datasets, training jobs, versions, rollout, drift."""
    api, default_namespace = api_client(kubeconfig, kube_context)
    namespace = namespace or default_namespace

    def current() -> list[ModelLoop]:
        return snapshot(api, namespace, model, prometheus, limit)

    if output != "table":
        click.echo(dump(current(), output))
        return
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPED_WIDTH)  # piped: like kubectl get, lines are not cut at 80
    if not watch:
        console.print(view(current(), model, namespace))
        return
    with Live(view(current(), model, namespace), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(view(current(), model, namespace), refresh=True)
        except KeyboardInterrupt:
            pass
