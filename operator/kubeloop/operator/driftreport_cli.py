"""``kubeloop drift-report``: a model's drift report as one self-contained HTML file.

Reads ``GET /v2/models/{name}/drift`` (JSON, :class:`~kubeloop.driftreport.DriftReport`)
from a serving endpoint and renders it here with the same renderer the serving pod
uses for ``/drift-report``. Two ways to reach the server:

* ``--url``: a serving endpoint this machine reaches (``kubeloop serve`` on loopback,
  a port-forward), with ``--token-file`` when the server wants a token;
* ``--deployment``: a ModelDeployment's Service through the API server's service proxy,
  with the serving token read from the deployment's ``status.feedbackTokenSecret``. The
  proxy drops ``Authorization``, so the token goes in ``X-Kubeloop-Token``. One pod
  answers: each pod (and each worker process) keeps its own window.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import click
import httpx
from kubernetes import client
from pydantic import ValidationError

from kubeloop.api.base import GROUP, VERSION
from kubeloop.driftreport import DriftReport, render_html
from kubeloop.operator.status_cli import api_client

#: the header the drift routes take the token in besides ``Authorization: Bearer``
TOKEN_HEADER = "X-Kubeloop-Token"


def drift_path(model: str) -> str:
    return f"/v2/models/{model}/drift"


def parse_report(status: int, body: bytes, where: str) -> DriftReport:
    """The report in an answer, or an error that says what the server said."""
    if status == 401:
        raise click.ClickException(f"{where}: 401, the server wants a token (--token-file)")
    if status != 200:
        raise click.ClickException(f"{where}: HTTP {status}: {body[:500].decode(errors='replace')}")
    try:
        return DriftReport.model_validate_json(body)
    except ValidationError as exc:
        raise click.ClickException(f"{where}: not a drift report: {exc}") from exc


def fetch_url(url: str, model: str | None, token: str | None, timeout: float) -> DriftReport:
    """The report from a serving endpoint (the served model when ``model`` is None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout) as http:
            if model is None:
                models = http.get("/v1/models").json().get("models") or []
                if not models:
                    raise click.ClickException(f"{base} serves no model yet")
                model = str(models[0])
            answer = http.get(drift_path(model))
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{base}: {exc}") from exc
    return parse_report(answer.status_code, answer.content, base + drift_path(model))


def fetch_deployment(
    api: client.ApiClient, namespace: str, name: str, timeout: float
) -> DriftReport:
    """The report of ModelDeployment ``name`` through the API server's service proxy."""
    md = _get(
        lambda: client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", name
        ),
        f"modeldeployment {namespace}/{name}",
    )
    svc = _get(
        lambda: client.CoreV1Api(api).read_namespaced_service(name, namespace),
        f"service {namespace}/{name} (the deployment's stable pods)",
    )
    port = svc.spec.ports[0]
    scheme = "https" if port.name == "https" else "http"
    model = md["spec"]["modelName"]
    secret = (md.get("status") or {}).get("feedbackTokenSecret")
    headers = {TOKEN_HEADER: read_token(api, namespace, secret)} if secret else {}
    path = (
        f"/api/v1/namespaces/{namespace}/services/{scheme}:{name}:{port.name}/proxy"
        f"{drift_path(model)}"
    )
    try:
        answer = api.call_api(
            path, "GET", header_params=headers, auth_settings=["BearerToken"],
            _preload_content=False, _return_http_data_only=True, _request_timeout=timeout,
        )  # fmt: skip
        status, body = answer.status, answer.data
    except client.ApiException as exc:
        status, body = exc.status, (exc.body or b"")
    raw = body if isinstance(body, bytes) else str(body).encode()
    return parse_report(status, raw, f"service proxy {path}")


def read_token(api: client.ApiClient, namespace: str, secret: str) -> str:
    """The serving token in the deployment's token Secret (key ``token``)."""
    found = _get(
        lambda: client.CoreV1Api(api).read_namespaced_secret(secret, namespace),
        f"secret {namespace}/{secret} (the serving token)",
    )
    data = found.data or {}
    if "token" not in data:
        raise click.ClickException(f"secret {namespace}/{secret} has no key 'token'")
    return base64.b64decode(data["token"]).decode().strip()


def _get(call: Any, what: str) -> Any:
    try:
        return call()
    except client.ApiException as exc:
        raise click.ClickException(f"reading {what}: {exc.status} {exc.reason}") from exc


@click.command("drift-report")
@click.option("--deployment", "-d", help="A ModelDeployment: read through the API server.")
@click.option("--namespace", "-n", help="Its namespace (default: the kubeconfig's).")
@click.option("--url", help="Or a serving endpoint, e.g. http://127.0.0.1:8080.")
@click.option("--model", help="With --url: the model name (default: the one served).")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --url: a file holding the server's bearer token.",
)
@click.option(
    "--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the HTML page.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Write the report's JSON instead.")
@click.option("--kubeconfig", help="Path to a kubeconfig (default: KUBECONFIG, ~/.kube/config).")
@click.option("--context", help="The kubeconfig context to use.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds per request.")
def drift_report(
    deployment: str | None,
    namespace: str | None,
    url: str | None,
    model: str | None,
    token_file: Path | None,
    out: Path,
    as_json: bool,
    kubeconfig: str | None,
    context: str | None,
    timeout: float,
) -> None:
    """Write a model's drift report (reference vs live per feature) as one HTML file."""
    if (deployment is None) == (url is None):
        raise click.UsageError("give either --deployment or --url")
    if url is not None:
        token = token_file.read_text().strip() if token_file else None
        report = fetch_url(url, model, token, timeout)
    else:
        assert deployment is not None
        api, default_ns = api_client(kubeconfig, context)
        report = fetch_deployment(api, namespace or default_ns, deployment, timeout)
    out.write_text(report.model_dump_json(indent=2) if as_json else render_html(report))
    drifted = sum(f.drifted for f in report.features)
    click.echo(
        f"{out}: {report.model} {report.version}, {drifted} of {len(report.features)} "
        f"features drifted, {report.rows} live rows"
    )
