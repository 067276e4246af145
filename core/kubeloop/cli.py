"""The `kubeloop` command line.

Subcommands live with the component that owns them and are imported only when
invoked, so `kubeloop serve` in the serving image never imports scikit-learn or
kopf, and `kubeloop --help` lists them from ``COMMANDS`` without importing any (each
image carries one component's dependencies). To add one, map its name to
``("module:attribute", "short help")`` in ``COMMANDS``; a unit test checks that the
short help matches the command's own.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

import click

from kubeloop.contracts import storage

#: name -> ("module:attribute" of a click command, imported lazily; its short help).
COMMANDS: dict[str, tuple[str, str]] = {
    "cluster": (
        "kubeloop.devcluster.cli:cluster",
        "Run a local Kubernetes control plane (etcd, kube-apiserver, controller-manager,"
        " scheduler) with kwok fake nodes, all as local processes on loopback ports.",
    ),
    "gc-artifacts": (
        "kubeloop.trainer.gc_cli:gc_artifacts",
        "Delete model artifact folders a registry retention pruned (only under --under).",
    ),
    "inspect": (
        "kubeloop.trainer.register_cli:inspect",
        "Read an ONNX model's inputs and outputs and report them as a Job result.",
    ),
    "operator": (
        "kubeloop.operator.app:operator",
        "Run the Kubeloop operator against the current cluster (in-cluster or kubeconfig).",
    ),
    "serve": (
        "kubeloop.serving.cli:serve",
        "Serve a model over the Open Inference Protocol v2 (REST, and gRPC with --grpc-port) and"
        " KServe V1.",
    ),
    "snapshot": (
        "kubeloop.trainer.cli:snapshot",
        "Validate a data set, compute its content digest and store an immutable copy.",
    ),
    "train": (
        "kubeloop.trainer.cli:train",
        "Train a scikit-learn model, export it to ONNX, check parity and write its artifacts.",
    ),
    "status": (
        "kubeloop.operator.status_cli:status",
        "Show a model's loop: datasets, training jobs, versions, rollout, drift.",
    ),
    "predict": (
        "kubeloop.trainer.cli:predict",
        "Score a table with a model, appending the prediction columns the server returns.",
    ),
    "drift-report": (
        "kubeloop.operator.driftreport_cli:drift_report",
        "Write a model's drift report (reference vs live per feature) as one HTML file.",
    ),
    "register": (
        "kubeloop.trainer.register_cli:register",
        "Register an ONNX model exported elsewhere (PyTorch, TensorFlow, ...) as a ModelVersion.",
    ),
    "rules": (
        "kubeloop.operator.alerts.cli:rules",
        "Print the Prometheus alert rules that trigger retraining (see docs/monitoring.md).",
    ),
}


#: What to install for each command, told when its component is absent (e.g. in an image).
INSTALLS: dict[str, str] = {
    "cluster": "it needs a Kubeloop checkout with `make setup` (the devcluster extra, in no image)",
    "drift-report": "install the [operator] extra (it reaches the cluster with its client)",
    "inspect": "it runs in the kubeloop-trainer image, or install the [trainer] extra",
    "operator": "it runs in the kubeloop-operator image, or install the [operator] extra",
    "predict": "it runs in the kubeloop-trainer image, or install the [trainer] extra",
    "register": "it runs in the kubeloop-trainer image, or install the [trainer] extra",
    "rules": "it runs in the kubeloop-operator image, or install the [operator] extra",
    "status": "install the [operator] extra (it reads the API server with the operator's client)",
    "serve": "it runs in the kubeloop-serving image, or install the [serving] extra",
    "snapshot": "it runs in the kubeloop-trainer image, or install the [trainer] extra",
    "train": "it runs in the kubeloop-trainer image, or install the [trainer] extra",
}


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare tree)."""
    try:
        return dist_version("kubeloop")
    except PackageNotFoundError:
        return "0+unknown"


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        target, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise click.UsageError(
                f"'kubeloop {cmd_name}' is not in this install (no module {exc.name}): "
                f"{INSTALLS[cmd_name]}",
                ctx,
            ) from exc
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with their recorded short help, importing none of them."""
        rows = [
            (name, COMMANDS[name][1] if name in COMMANDS else self._short_help(ctx, name))
            for name in self.list_commands(ctx)
        ]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, _shorten(name, text, limit)) for name, text in rows])

    def _short_help(self, ctx: click.Context, name: str) -> str:
        command = super().get_command(ctx, name)
        return command.get_short_help_str(limit=200) if command is not None else ""


def _shorten(name: str, text: str, limit: int) -> str:
    """click's own truncation of a short help to one line of ``limit`` characters."""
    return click.Command(name, help=text).get_short_help_str(max(limit, 45))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", prog_name="kubeloop")
def main() -> None:
    """Kubeloop: datasets, training, versioned ONNX models, canary serving and
    drift-driven retraining on Kubernetes."""
    storage.honour_standard_env()


@main.command()
def version() -> None:
    """Print the Kubeloop version."""
    click.echo(package_version())
