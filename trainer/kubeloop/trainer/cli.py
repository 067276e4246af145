"""`kubeloop snapshot` and `kubeloop train`: the trainer image's two commands.

Exit codes: 0 success, 1 the run failed (e.g. parity), 2 bad input (data,
schema, spec), 3 the quality gate rejected the model. Every outcome prints one
JobResult line (and writes it as the termination message); errors also print one
line on stderr naming the column or field and the problem.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import yaml
from click.core import ParameterSource
from pydantic import ValidationError

from kubeloop.api.v1alpha1 import DataSchema, TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout, Profile, join
from kubeloop.contracts.results import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_REJECTED,
    JobResult,
    report,
)

if TYPE_CHECKING:
    import pandas as pd


def _fail(kind: str, code: int, reason: str) -> NoReturn:
    click.echo(f"error: {reason}", err=True)
    report(JobResult(kind=kind, status="failed", reason=reason))
    sys.exit(code)


def _load_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return yaml.safe_load(text)


def _schema_document(doc: Any) -> Any:
    """The DataSchema in ``doc``: the schema itself, a Dataset spec or a Dataset manifest."""
    if isinstance(doc, dict) and doc.get("kind") == "Dataset":
        doc = doc.get("spec") or {}
    if isinstance(doc, dict) and "columns" not in doc and "schema" in doc:
        doc = doc["schema"]
    return doc


def _spec_document(doc: Any, path: str) -> Any:
    """The TrainingJob spec in ``doc``: the spec itself or a whole TrainingJob manifest."""
    if isinstance(doc, dict) and "kind" in doc:
        if doc["kind"] != "TrainingJob":
            _fail("train", EXIT_BAD_INPUT, f"spec {path}: a {doc['kind']}, not a TrainingJob")
        return doc.get("spec") or {}
    return doc


def _internal(kind: str, exc: Exception) -> NoReturn:
    """An error no check foresaw: the traceback for the log, the summary for the operator."""
    traceback.print_exc()
    _fail(kind, EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc}")


def _validation_message(exc: ValidationError) -> str:
    """pydantic's errors as ``field.path: message; ...`` (rules on the whole object unprefixed)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@click.command()
@click.option("--source", required=True, help="Data URI or path (file://, http(s)://, s3://, ...).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "jsonl"]), required=True)
@click.option("--out", required=True, help="Directory URI; the snapshot goes to OUT/<digest>/.")
@click.option("--schema", "schema_file", help="A DataSchema as JSON or YAML the data must match.")
def snapshot(source: str, fmt: str, out: str, schema_file: str | None) -> None:
    """Validate a data set, compute its content digest and store an immutable copy."""
    from kubeloop.trainer import data, output

    try:
        schema = (
            DataSchema.model_validate(_schema_document(_load_document(schema_file)))
            if schema_file
            else None
        )
    except (OSError, yaml.YAMLError) as exc:
        _fail("snapshot", EXIT_BAD_INPUT, f"schema {schema_file}: {exc}")
    except ValidationError as exc:
        _fail("snapshot", EXIT_BAD_INPUT, f"schema {schema_file}: {_validation_message(exc)}")
    try:
        output.check_target(out)
    except output.OutputError as exc:
        _fail("snapshot", EXIT_BAD_INPUT, str(exc))
    try:
        frame = data.read_table(source, fmt)  # type: ignore[arg-type]
        if schema is not None:
            data.validate(frame, schema)
    except data.DataError as exc:
        _fail("snapshot", EXIT_BAD_INPUT, str(exc))
    except Exception as exc:
        _internal("snapshot", exc)
    try:
        summary = _store_snapshot(frame, fmt, out)
    except Exception as exc:
        _internal("snapshot", exc)
    report(summary)


def _store_snapshot(frame: pd.DataFrame, fmt: str, out: str) -> JobResult:
    """Write the immutable copy and its profile under OUT/<digest>/ unless already there."""
    from kubeloop.trainer import data, output

    digest = data.digest(frame)
    target = ArtifactLayout.snapshot_dir(out, digest)
    data_file = ArtifactLayout.data_file(fmt)
    if not output.exists(join(target, ArtifactLayout.PROFILE)):  # immutable: written once
        with output.staging() as tmp:
            data.write_table(frame, str(tmp / data_file), fmt)  # type: ignore[arg-type]
            profile = Profile(rows=len(frame), features=data.profile_frame(frame))
            (tmp / ArtifactLayout.PROFILE).write_text(profile.model_dump_json(indent=1))
            output.publish(tmp, target, last=ArtifactLayout.PROFILE, replace=False)
    elif not output.exists(join(target, data_file)):
        # The same content arrived before in another format: add this format's copy.
        with output.staging() as tmp:
            data.write_table(frame, str(tmp / data_file), fmt)  # type: ignore[arg-type]
            output.add(tmp / data_file, join(target, data_file))
    return JobResult(
        kind="snapshot",
        status="succeeded",
        digest=digest,
        rows=len(frame),
        columns=data.infer_columns(frame),
        snapshot_uri=join(target, data_file),
        profile_uri=join(target, ArtifactLayout.PROFILE),
    )


def _parse_gate(expressions: tuple[str, ...]) -> dict[str, dict[str, float]]:
    gate: dict[str, dict[str, float]] = {}
    for expr in expressions:
        for op, key in ((">=", "min"), ("<=", "max")):
            if op in expr:
                name, _, value = expr.partition(op)
                try:
                    gate.setdefault(key, {})[name.strip()] = float(value)
                except ValueError:
                    raise click.BadParameter(
                        f"{expr!r}: {value!r} is not a number", param_hint="--gate"
                    ) from None
                break
        else:
            raise click.BadParameter(
                f"{expr!r}: use METRIC>=VALUE or METRIC<=VALUE", param_hint="--gate"
            )
    return gate


@click.command()
@click.option("--spec", "spec_file", help="A TrainingJob spec (or whole manifest) as YAML/JSON.")
@click.option("--data", "data_uri", required=True, help="The data to train on (path or URI).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    help="Default: from the name.",
)
@click.option("--out", required=True, help="Directory (path or URI) for the artifacts.")
@click.option("--name", help="Model name (default: spec.modelName or 'model').")
@click.option("--target", help="Label column.")
@click.option("--task", type=click.Choice(["classification", "regression"]))
@click.option("--estimator", help="Estimator class from the allow-list.")
@click.option("--params", default="{}", show_default=True, help="Estimator params as JSON.")
@click.option("--features", help="Comma-separated feature columns (default: all but the target).")
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--gate", "gates", multiple=True, help="Quality gate, e.g. 'f1>=0.8' (repeatable).")
@click.pass_context
def train(
    ctx: click.Context,
    spec_file: str | None,
    data_uri: str,
    fmt: str | None,
    out: str,
    name: str | None,
    target: str | None,
    task: str | None,
    estimator: str | None,
    params: str,
    features: str | None,
    test_fraction: float,
    seed: int,
    gates: tuple[str, ...],
) -> None:
    """Train a scikit-learn model, export it to ONNX, check parity and write its artifacts."""
    try:
        if spec_file:
            given = [
                f"--{p.replace('_', '-')}"
                for p in ("target", "task", "estimator", "params", "features", "test_fraction",
                          "seed", "gates")
                if ctx.get_parameter_source(p) is not ParameterSource.DEFAULT
            ]  # fmt: skip
            if given:
                raise click.UsageError(
                    f"{', '.join(given).replace('--gates', '--gate')} cannot be combined with "
                    "--spec (the spec says it)"
                )
            raw = _spec_document(_load_document(spec_file), spec_file)
        else:
            missing = [
                n
                for n, v in (("--target", target), ("--task", task), ("--estimator", estimator))
                if not v
            ]
            if missing:
                raise click.UsageError(f"without --spec, {', '.join(missing)} are required")
            try:
                estimator_params = json.loads(params)
            except ValueError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
            raw = {
                "datasetRef": {"name": "local"},
                "task": task,
                "target": target,
                "features": features.split(",") if features else None,
                "estimator": {"className": estimator, "params": estimator_params},
                "split": {"testFraction": test_fraction, "seed": seed},
                "gate": _parse_gate(gates) or None,
                "modelName": name or "model",
            }
        spec = TrainingJobSpec.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        _fail("train", EXIT_BAD_INPUT, f"spec {spec_file}: {exc}")
    except ValidationError as exc:
        _fail("train", EXIT_BAD_INPUT, f"spec: {_validation_message(exc)}")
    except click.UsageError as exc:
        _fail("train", EXIT_BAD_INPUT, exc.format_message())
    # scikit-learn and friends load only once the spec holds up: bad specs fail fast.
    from kubeloop.trainer import data, model, output
    from kubeloop.trainer import train as training

    try:
        output.check_target(out)
    except output.OutputError as exc:
        _fail("train", EXIT_BAD_INPUT, str(exc))
    run = training.Run(
        spec=spec, data_uri=data_uri, out=out, name=name or spec.model_name, data_format=fmt
    )
    try:
        summary = training.train(run)
    except (data.DataError, model.SpecError) as exc:
        _fail("train", EXIT_BAD_INPUT, str(exc))
    except training.ParityError as exc:
        _fail("train", EXIT_FAILED, str(exc))
    except training.GateRejectedError as exc:
        click.echo(f"rejected: {exc.summary.reason}", err=True)
        report(exc.summary)
        sys.exit(EXIT_REJECTED)
    except Exception as exc:
        _internal("train", exc)
    report(summary)
