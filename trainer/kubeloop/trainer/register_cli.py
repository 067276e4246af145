"""`kubeloop register`: publish an ONNX model exported elsewhere and create its ModelVersion;
`kubeloop inspect`: the Job that reads a bare model's inputs and outputs for the operator.

Exit codes: 0 registered, 2 bad input (the file, a flag, the reference table; one line on
stderr naming it, nothing written), 1 the store or the API server failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn, get_args

import click
import fsspec
import yaml
from pydantic import ValidationError

from kubeloop.api.base import GROUP, VERSION
from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata, join
from kubeloop.contracts.frameworks import Task
from kubeloop.contracts.results import EXIT_BAD_INPUT, EXIT_FAILED, RESULT_LIMIT
from kubeloop.trainer import output
from kubeloop.trainer import register as reg

#: How many taken version numbers ``--apply`` steps over before giving up.
MAX_ALLOCATION_TRIES = 20


def _fail(code: int, reason: str) -> NoReturn:
    click.echo(f"error: {reason}", err=True)
    sys.exit(code)


def _read_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as f:
            data: bytes = f.read()
    except (OSError, ValueError) as exc:
        _fail(EXIT_BAD_INPUT, f"--onnx {uri}: {exc}")
    return data


def _metrics(path: str | None) -> dict[str, float]:
    if path is None:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
        return {str(k): float(v) for k, v in doc.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        _fail(EXIT_BAD_INPUT, f"--metrics {path}: not a JSON object of numbers ({exc})")


def _prepare(
    onnx_uri: str, opts: reg.Options, reference: str | None
) -> tuple[bytes, reg.Plan, Any]:
    """Every check before writing: the graph, the flags, the reference, a real run."""
    onnx_bytes = _read_bytes(onnx_uri)
    planned = reg.plan(reg.read_graph(onnx_bytes, f"--onnx {onnx_uri}"), opts)
    frame = reg.reference_frame(reference, planned) if reference else None
    outputs = reg.check_runs(onnx_bytes, planned, frame)
    profile = reg.profile_of(frame, planned, outputs, opts.task) if frame is not None else None
    return onnx_bytes, planned, profile


def publish(folder: str, onnx_bytes: bytes, meta: ModelMetadata, profile: Any) -> None:
    """Write the model folder whole (``model.json`` last). A complete folder already there
    is kept when it describes the same registration, refused otherwise."""
    existing = join(folder, ArtifactLayout.METADATA)
    if output.exists(existing):
        with fsspec.open(existing, "rb") as f:
            theirs = ModelMetadata.model_validate_json(f.read())
        if not reg.same_contract(theirs, meta):
            _fail(
                EXIT_BAD_INPUT,
                f"{folder} already holds this model.onnx registered with other metadata "
                "(features, outputs, task or metrics); register it under another --name",
            )
        return
    with output.staging() as tmp:
        (tmp / ArtifactLayout.MODEL).write_bytes(onnx_bytes)
        if profile is not None:
            (tmp / ArtifactLayout.PROFILE).write_text(profile.model_dump_json(indent=1))
        (tmp / ArtifactLayout.METADATA).write_text(meta.model_dump_json(indent=1))
        output.publish(tmp, folder, last=ArtifactLayout.METADATA, replace=False)


def connect(kubeconfig: str | None) -> Any:
    """The API client ``--apply`` creates the ModelVersion with (before anything is written)."""
    try:
        from kubernetes import client, config
    except ModuleNotFoundError:
        _fail(EXIT_FAILED, "--apply needs the kubernetes client: install the [operator] extra")
    try:
        config.load_kube_config(config_file=kubeconfig)
    except (config.ConfigException, FileNotFoundError) as exc:
        _fail(EXIT_FAILED, f"no cluster to apply to: {exc} (set KUBECONFIG or --kubeconfig)")
    return client.CustomObjectsApi()


def apply(api: Any, build: Any, namespace: str, version: int | None) -> dict[str, Any]:
    """Create the ModelVersion through the API server: ``version``, or the next free
    number of the model (a number another writer takes meanwhile is stepped over)."""
    from kubernetes.client.exceptions import ApiException

    number = version or _next_version(api, namespace, build(1)["spec"]["modelName"])
    for _ in range(MAX_ALLOCATION_TRIES):
        body = build(number)
        try:
            created: dict[str, Any] = api.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "modelversions", body
            )
            return created
        except ApiException as exc:
            if exc.status != 409 or version is not None:
                _fail(
                    EXIT_FAILED,
                    f"ModelVersion {body['metadata']['name']}: {exc.reason}: {_api_message(exc)}",
                )
            number += 1
    _fail(EXIT_FAILED, "no free version number found")


def _next_version(api: Any, namespace: str, model: str) -> int:
    found = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions")
    taken = [
        int(mv["spec"]["version"])
        for mv in found.get("items", [])
        if mv.get("spec", {}).get("modelName") == model
    ]
    return max(taken, default=0) + 1


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.body))
    except (TypeError, ValueError):
        return str(exc.body)


@click.command()
@click.option("--onnx", "onnx_uri", required=True, help="The model.onnx to register (path or URI).")
@click.option("--name", required=True, help="Model name (the ModelVersion's modelName).")
@click.option(
    "--task", type=click.Choice(get_args(Task)), default="classification", show_default=True
)
@click.option("--feature-names", help="Comma-separated names of a 2-D [N, F] input's columns.")
@click.option("--label-output", help="The output holding the prediction (default: by task).")
@click.option("--proba-output", help="The output holding class probabilities.")
@click.option("--reference", help="CSV of reference rows: the drift profile (profile.json).")
@click.option("--metrics", "metrics_file", help="JSON object of held-out metrics.")
@click.option(
    "--store",
    envvar="KUBELOOP_STORE",
    required=True,
    help="Artifact store root URI: the operator's artifactRoot.",
)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    help="Version number (default: the next free one; 1 with --print).",
)
@click.option(
    "--apply/--print",
    "do_apply",
    default=False,
    help="Create the ModelVersion, or print its manifest (default).",
)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig for --apply.")
def register(
    onnx_uri: str,
    name: str,
    task: Task,
    feature_names: str | None,
    label_output: str | None,
    proba_output: str | None,
    reference: str | None,
    metrics_file: str | None,
    store: str,
    namespace: str,
    version: int | None,
    do_apply: bool,
    kubeconfig: str | None,
) -> None:
    """Register an ONNX model exported elsewhere (PyTorch, TensorFlow, ...) as a ModelVersion."""
    names = [n.strip() for n in feature_names.split(",")] if feature_names else None
    opts = reg.Options(task, names, label_output, proba_output)
    metrics = _metrics(metrics_file)
    try:
        output.check_target(store)
    except output.OutputError as exc:
        _fail(EXIT_BAD_INPUT, f"--store {store}: {exc.__cause__ or exc}")
    try:
        onnx_bytes, planned, profile = _prepare(onnx_uri, opts, reference)
    except reg.RegisterError as exc:
        _fail(EXIT_BAD_INPUT, str(exc))
    sha = reg.digest(onnx_bytes)
    meta = reg.metadata_of(name, task, sha, planned, metrics, reference or "")
    folder = reg.model_dir(store, namespace, name, sha)
    artifact = join(folder, ArtifactLayout.MODEL)
    profile_uri = join(folder, ArtifactLayout.PROFILE) if profile is not None else None

    def build(number: int) -> dict[str, Any]:
        return reg.build_model_version(meta, artifact, profile_uri, number, namespace)

    try:
        build(version or 1)  # a name the API server would refuse, before writing
    except ValidationError as exc:
        _fail(EXIT_BAD_INPUT, f"--name {name}: {exc.errors()[0]['msg']}")
    api = connect(kubeconfig) if do_apply else None
    publish(folder, onnx_bytes, meta, profile)
    click.echo(f"registered {ArtifactLayout.MODEL} sha256 {sha[:12]} at {folder}", err=True)
    if api is None:
        click.echo(yaml.safe_dump(build(version or 1), sort_keys=False), nl=False)
        return
    created = apply(api, build, namespace, version)
    click.echo(f"modelversion.{GROUP}/{created['metadata']['name']} created")


@click.command()
@click.option("--model", "model_uri", required=True, help="The model.onnx to read (path or URI).")
@click.option("--sha256", "expected", help="The digest the file must have (hex).")
def inspect(model_uri: str, expected: str | None) -> None:
    """Read an ONNX model's inputs and outputs and report them as a Job result."""
    from kubeloop.contracts.results import JobResult, report

    def fail(code: int, reason: str) -> NoReturn:
        click.echo(f"error: {reason}", err=True)
        report(JobResult(kind="inspect", status="failed", reason=reason))
        sys.exit(code)

    try:
        with fsspec.open(model_uri, "rb") as f:
            onnx_bytes: bytes = f.read()
    except (OSError, ValueError) as exc:
        fail(EXIT_FAILED, f"{model_uri}: {exc}")
    sha = reg.digest(onnx_bytes)
    if expected is not None and sha != expected:
        fail(EXIT_BAD_INPUT, f"{model_uri} has sha256 {sha}, not {expected}")
    try:
        graph = reg.read_graph(onnx_bytes, model_uri)
        inputs, outputs = reg.tensors(graph.inputs), reg.tensors(graph.outputs)
    except reg.RegisterError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    result = JobResult(
        kind="inspect", status="succeeded", sha256=sha, inputs=inputs, outputs=outputs
    )
    if len(result.to_message().encode()) > RESULT_LIMIT:
        fail(
            EXIT_BAD_INPUT,
            f"{model_uri}: its {len(inputs)} inputs do not fit a Job result; "
            "list them in the ModelVersion's spec",
        )
    report(result)
