"""The `kubeloop` command line.

Subcommands live with the component that owns them and are imported only when
invoked, so `kubeloop serve` in the serving image never imports scikit-learn or
kopf. To add one, map its name to ``"module:attribute"`` in ``COMMANDS``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

import click

#: name -> "module:attribute" of a click command, imported lazily.
COMMANDS: dict[str, str] = {
    "cluster": "kubeloop.devcluster.cli:cluster",
    "operator": "kubeloop.operator.app:operator",
    "serve": "kubeloop.serving.cli:serve",
    "snapshot": "kubeloop.trainer.cli:snapshot",
    "train": "kubeloop.trainer.cli:train",
    "rules": "kubeloop.operator.alerts.cli:rules",
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
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", prog_name="kubeloop")
def main() -> None:
    """Kubeloop: datasets, training, versioned ONNX models, canary serving and
    drift-driven retraining on Kubernetes."""


@main.command()
def version() -> None:
    """Print the Kubeloop version."""
    click.echo(package_version())
