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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, get_args

import click
import yaml
from click.core import ParameterSource
from pydantic import ValidationError

from kubeloop.api.v1alpha1 import DataSchema, Sampling, TrainingJobSpec
from kubeloop.contracts.frameworks import Task
from kubeloop.contracts.results import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_REJECTED,
    SOURCE_URL_ENV,
    JobResult,
    report,
)
from kubeloop.contracts.search import SHARD_ENV
from kubeloop.progress import Progress, open_progress, progress_option

if TYPE_CHECKING:
    from kubeloop.trainer import train as training

#: The data formats snapshots and training runs read (and snapshots write).
FORMATS = ("csv", "parquet", "jsonl")


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


def _check_out(kind: str, out: str) -> None:
    """Exit 2 before any work when nothing can write to ``out``."""
    from kubeloop.trainer import output

    try:
        output.check_target(out)
    except output.OutputError as exc:
        _fail(kind, EXIT_BAD_INPUT, str(exc))


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
@click.option(
    "--source",
    envvar=SOURCE_URL_ENV,
    show_envvar=True,
    required=True,
    help="Data URI or path (file://, http(s)://, s3://, ...), or a postgresql://user@host:port/db "
    "URL with --query (its password from PGPASSWORD or the environment variable, never here).",
)
@click.option("--query", help="SQL query of a postgresql:// source; stored as Parquet.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: from the name.")
@click.option("--out", required=True, help="Directory URI; the snapshot goes to OUT/<digest>/.")
@click.option("--schema", "schema_file", help="A DataSchema as JSON or YAML the data must match.")
@progress_option
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    envvar="KUBELOOP_BATCH_ROWS",
    show_envvar=True,
    help="Rows read, checked, hashed and copied at a time (memory is bounded by it).",
)
@click.pass_context
def snapshot(
    ctx: click.Context,
    /,
    source: str,
    query: str | None,
    fmt: str | None,
    out: str,
    schema_file: str | None,
    progress_mode: str,
    batch_rows: int,
) -> None:
    """Validate a data set, compute its content digest and store an immutable copy."""
    from kubeloop.trainer import data
    from kubeloop.trainer import snapshot as snapshots

    schema = _snapshot_schema(schema_file)
    fmt = _snapshot_format(ctx, source, query, fmt)
    _check_out("snapshot", out)
    with open_progress(progress_mode) as shown:
        try:
            summary = snapshots.take(source, query, fmt, out, schema, batch_rows, shown)
        except data.DataError as exc:
            _fail("snapshot", _data_error_code(exc), _named(source, query, str(exc)))
        except Exception as exc:
            _internal("snapshot", exc)
    report(summary)


def _snapshot_schema(schema_file: str | None) -> DataSchema | None:
    """The --schema file's DataSchema; exit 2 when it cannot be read or is not one."""
    if not schema_file:
        return None
    try:
        return DataSchema.model_validate(_schema_document(_load_document(schema_file)))
    except (OSError, yaml.YAMLError) as exc:
        _fail("snapshot", EXIT_BAD_INPUT, f"schema {schema_file}: {exc}")
    except ValidationError as exc:
        _fail("snapshot", EXIT_BAD_INPUT, f"schema {schema_file}: {_validation_message(exc)}")


def _snapshot_format(ctx: click.Context, source: str, query: str | None, fmt: str | None) -> str:
    """The format of the copy; exit 2 on a source and flags that do not go together —
    first of all a password on the command line, which would show in the process list."""
    from kubeloop.trainer import data, sql

    if not sql.is_sql_url(source):
        if query is not None:
            _fail("snapshot", EXIT_BAD_INPUT, "--query needs a postgresql:// --source")
        try:
            return fmt or data.format_of(source)
        except data.DataError as exc:
            _fail("snapshot", EXIT_BAD_INPUT, str(exc))
    try:
        secret = sql.has_password(source)
    except data.DataError as exc:
        _fail("snapshot", EXIT_BAD_INPUT, f"--source: {exc}")
    if secret and ctx.get_parameter_source("source") is ParameterSource.COMMANDLINE:
        _fail(
            "snapshot",
            EXIT_BAD_INPUT,
            f"--source {sql.display(source)}: refusing a password on the command line (it "
            f"would show in the process list); give it in PGPASSWORD, or the whole URL in "
            f"{SOURCE_URL_ENV}",
        )
    if not query or not query.strip():
        _fail("snapshot", EXIT_BAD_INPUT, f"{sql.display(source)}: a SQL source needs --query")
    if fmt not in (None, sql.FORMAT):
        _fail("snapshot", EXIT_BAD_INPUT, f"--format {fmt}: a SQL source is stored as parquet")
    return sql.FORMAT


def _data_error_code(exc: Exception) -> int:
    """A database that did not answer may answer a retry; everything else is bad input."""
    from kubeloop.trainer import sql

    return EXIT_FAILED if isinstance(exc, sql.SourceUnavailable) else EXIT_BAD_INPUT


def _named(source: str, query: str | None, reason: str) -> str:
    """A reason about a SQL source's data names the source (without its password)."""
    from kubeloop.trainer import sql

    if query is None or reason.startswith(sql.display(source)):
        return reason
    return f"{sql.display(source)}: {reason}"


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
    type=click.Choice(FORMATS),
    help="Default: from the name.",
)
@click.option("--out", required=True, help="Directory (path or URI) for the artifacts.")
@click.option("--name", help="Model name (default: spec.modelName or 'model').")
@click.option("--target", help="Label column.")
@click.option("--task", type=click.Choice(get_args(Task)))
@click.option("--estimator", help="Estimator class from the allow-list.")
@click.option("--params", default="{}", show_default=True, help="Estimator params as JSON.")
@click.option("--features", help="Comma-separated feature columns (default: all but the target).")
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--gate", "gates", multiple=True, help="Quality gate, e.g. 'f1>=0.8' (repeatable).")
@click.option(
    "--champion",
    help="The model to beat: a model directory or its model.onnx (path or URI). The new model "
    "fails unless it scores no worse on the same held-out rows (spec.gate.compareTo, else "
    "the default metric and a tolerance of 0.01).",
)
@click.option("--champion-version", type=click.IntRange(min=1), help="The champion's version.")
@click.option("--champion-sha256", help="The champion's model.onnx must have this sha256 (hex).")
@progress_option
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    help="Train on a sample of at most this many rows (spec.sampling.maxRows), drawn per "
    "class while the data streams.",
)
@click.option(
    "--sample-seed", type=click.IntRange(min=0), help="Seed of the sample (spec.sampling.seed)."
)
@click.option(
    "--search-shards",
    type=click.IntRange(min=1),
    help="Run one shard of spec.search across this many pods: cross-validate its share of "
    "the candidates and write each trial under OUT/trials/ (no model is trained).",
)
@click.option(
    "--search-shard",
    type=click.IntRange(min=0),
    envvar=SHARD_ENV,
    show_envvar=True,
    help="Which shard (from 0; an Indexed Job's pods get it from the environment).",
)
@click.option(
    "--trials",
    "trials_uri",
    help="The directory of a search run with --search-shards: refit its winner instead of "
    "searching.",
)
@click.pass_context
def train(
    ctx: click.Context,
    /,
    spec_file: str | None,
    data_uri: str,
    fmt: str | None,
    out: str,
    name: str | None,
    champion: str | None,
    champion_version: int | None,
    champion_sha256: str | None,
    progress_mode: str,
    max_rows: int | None,
    sample_seed: int | None,
    search_shards: int | None,
    search_shard: int | None,
    trials_uri: str | None,
    **flags: Any,
) -> None:
    """Train a scikit-learn model, export it to ONNX, check parity and write its artifacts."""
    spec = _training_spec(ctx, spec_file, name, ModelFlags(**flags))
    spec = _sampled(spec, max_rows, sample_seed)
    shard = _check_search_flags(spec, search_shards, search_shard, trials_uri, champion)
    if champion is None and (champion_version or champion_sha256):
        _fail("train", EXIT_BAD_INPUT, "--champion-version and --champion-sha256 need --champion")
    # scikit-learn and friends load only once the spec holds up: bad specs fail fast.
    from kubeloop.trainer import champion as champions
    from kubeloop.trainer import train as training

    _check_out("train", out)
    run = training.Run(
        spec=spec,
        data_uri=data_uri,
        out=out,
        name=name or spec.model_name,
        data_format=fmt,
        champion=(
            champions.ChampionRef(champion, champion_version, champion_sha256) if champion else None
        ),
    )
    with open_progress(progress_mode) as shown:
        result = _train(run, shown, shard, trials_uri)
    report(result)


def _check_search_flags(
    spec: TrainingJobSpec,
    shards: int | None,
    shard: int | None,
    trials_uri: str | None,
    champion: str | None,
) -> tuple[int, int] | None:
    """(shard, shards) when this run is one shard of a search; exit 2 on flags that do not
    go together."""
    if (shards is not None or trials_uri) and spec.search is None:
        _fail("train", EXIT_BAD_INPUT, "--search-shards and --trials need spec.search")
    if shards is None:
        return None
    if trials_uri or champion:
        _fail("train", EXIT_BAD_INPUT, "--search-shards trains no model: no --trials/--champion")
    if shard is None or shard >= shards:
        _fail(
            "train",
            EXIT_BAD_INPUT,
            f"--search-shard (or {SHARD_ENV}) must be from 0 to {shards - 1}, got {shard}",
        )
    return shard, shards


def _sampled(spec: TrainingJobSpec, max_rows: int | None, seed: int | None) -> TrainingJobSpec:
    """The spec with --max-rows/--sample-seed in its ``sampling`` (flags win over the spec)."""
    if max_rows is None and seed is None:
        return spec
    given = spec.sampling
    if max_rows is None and given is None:
        _fail("train", EXIT_BAD_INPUT, "--sample-seed needs --max-rows (or spec.sampling)")
    sampling = Sampling(
        max_rows=max_rows if max_rows is not None else given.max_rows,  # type: ignore[union-attr]
        seed=seed if seed is not None else (given.seed if given else 0),
    )
    return spec.model_copy(update={"sampling": sampling})


@dataclass(frozen=True)
class ModelFlags:
    """The flags that describe the model, for runs without --spec."""

    target: str | None
    task: str | None
    estimator: str | None
    params: str
    features: str | None
    test_fraction: float
    seed: int
    gates: tuple[str, ...]

    def document(self, name: str | None) -> dict[str, Any]:
        """The TrainingJob spec they describe; a UsageError names a flag missing or bad."""
        required = (
            ("--target", self.target),
            ("--task", self.task),
            ("--estimator", self.estimator),
        )
        missing = [flag for flag, value in required if not value]
        if missing:
            raise click.UsageError(f"without --spec, {', '.join(missing)} are required")
        try:
            estimator_params = json.loads(self.params)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
        return {
            "datasetRef": {"name": "local"},
            "task": self.task,
            "target": self.target,
            "features": self.features.split(",") if self.features else None,
            "estimator": {"className": self.estimator, "params": estimator_params},
            "split": {"testFraction": self.test_fraction, "seed": self.seed},
            "gate": _parse_gate(self.gates) or None,
            "modelName": name or "model",
        }


def _training_spec(
    ctx: click.Context, spec_file: str | None, name: str | None, flags: ModelFlags
) -> TrainingJobSpec:
    """The spec from --spec or from the flags; exit 2 on anything wrong with it."""
    try:
        if spec_file:
            _refuse_model_flags(ctx)
            raw = _spec_document(_load_document(spec_file), spec_file)
        else:
            raw = flags.document(name)
        return TrainingJobSpec.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        _fail("train", EXIT_BAD_INPUT, f"spec {spec_file}: {exc}")
    except ValidationError as exc:
        _fail("train", EXIT_BAD_INPUT, f"spec: {_validation_message(exc)}")
    except click.UsageError as exc:
        _fail("train", EXIT_BAD_INPUT, exc.format_message())


def _refuse_model_flags(ctx: click.Context) -> None:
    """With --spec, a model flag given too is an error rather than silently ignored."""
    model_flags = {f.name for f in fields(ModelFlags)}
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name in model_flags
        and ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT
    ]
    if given:
        raise click.UsageError(
            f"{', '.join(given)} cannot be combined with --spec (the spec says it)"
        )


def _train(
    run: training.Run, shown: Progress, shard: tuple[int, int] | None, trials_uri: str | None
) -> JobResult:
    """The run's result when the model passes (or the shard's, for one shard of a search);
    else exit with the outcome's code."""
    from kubeloop.trainer import data, model, shards
    from kubeloop.trainer import train as training

    try:
        if shard is not None:
            return shards.run_shard(run, shard[0], shard[1], shown)
        if trials_uri:
            run.trials = shards.read_trials(trials_uri, run.spec)
        return training.train(run, shown)
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


@click.command()
@click.option(
    "--model", "model_uri", required=True, help="Model directory or URI (or its model.onnx)."
)
@click.option("--data", "data_uri", required=True, help="Table to score: CSV or Parquet URI.")
@click.option(
    "--out", "out_uri", required=True, help="Output file URI; written whole or not at all."
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["csv", "parquet"]),
    help="Output format. Default: from --out's suffix.",
)
@click.option(
    "--data-format",
    type=click.Choice(["csv", "parquet"]),
    help="Input format. Default: from --data's suffix.",
)
@click.option(
    "--sha256",
    "model_sha256",
    help="The model.onnx digest the model is registered with (its ModelVersion's); a model "
    "whose file differs is refused.",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Rows read, scored and written at a time (memory is bounded by it).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="onnxruntime threads (0: one per core).",
)
@progress_option
def predict(
    model_uri: str,
    data_uri: str,
    out_uri: str,
    out_format: str | None,
    data_format: str | None,
    model_sha256: str | None,
    batch_rows: int,
    threads: int,
    progress_mode: str,
) -> None:
    """Score a table with a model, appending the prediction columns the server returns.

    Rows are counted from 0 (the header not included) in error messages. Exit 2 for bad
    input (a missing feature column, a value of the wrong type): nothing is written.
    """
    from kubeloop.trainer import batches
    from kubeloop.trainer import predict as batch
    from kubeloop.trainer.errors import DataError

    try:
        formats = (
            batches.batch_format(data_uri, data_format, "--data-format"),
            batches.batch_format(out_uri, out_format, "--format"),
        )
        model = batch.BatchModel.load(model_uri, threads, model_sha256)
    except (DataError, batch.ModelError) as exc:
        _fail("predict", EXIT_BAD_INPUT, str(exc))
    _check_out("predict", out_uri)
    with open_progress(progress_mode) as shown:
        try:
            scored = batch.score(
                model, data_uri, formats[0], out_uri, formats[1], batch_rows, shown
            )
        except DataError as exc:
            reason = str(exc)
            named = isinstance(exc, batches.OutputDataError) or reason.startswith(data_uri)
            _fail("predict", EXIT_BAD_INPUT, reason if named else f"{data_uri}: {reason}")
        except Exception as exc:
            _internal("predict", exc)
    report(
        JobResult(
            kind="predict",
            status="succeeded",
            rows=scored.rows,
            sha256=scored.sha256,
            output_uri=out_uri,
            duration_seconds=round(scored.seconds, 3),
        )
    )
