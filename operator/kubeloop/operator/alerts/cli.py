"""``kubeloop rules``: print the alert rules (Prometheus rules file, PrometheusRule, ConfigMap)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kubeloop.operator.alerts.rules import FORMATS, Format, RuleOptions, render

F = TypeVar("F", bound=Callable[..., Any])


def _label(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: use KEY=VALUE", ctx=ctx, param=param)
        labels[key] = val
    return labels


#: The option defaults are the rules' own.
_DEFAULTS = RuleOptions()


def _rows_option(flag: str, default: int, help_: str) -> Callable[[F], F]:
    """A row-count minimum: an integer from 0."""
    return click.option(
        flag, type=click.IntRange(min=0), default=default, show_default=True, help=help_
    )


@click.command("rules")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="rules",
    show_default=True,
    help="rules: a Prometheus rules file; prometheusrule: a prometheus-operator "
    "PrometheusRule; configmap: a ConfigMap holding the rules file.",
)
@click.option(
    "--drift-for", default=_DEFAULTS.drift_for, show_default=True, help="`for:` of the drift alert."
)
@_rows_option(
    "--min-window-rows",
    _DEFAULTS.min_window_rows,
    "Rows the drift window must hold before its score counts.",
)
@click.option(
    "--online-for",
    default=_DEFAULTS.online_for,
    show_default=True,
    help="`for:` of the online-metric alert.",
)
@click.option(
    "--online-floor",
    type=click.FloatRange(0, 1),
    default=_DEFAULTS.online_floor,
    show_default=True,
    help="Accuracy floor for pods that export no kubeloop_online_metric_floor gauge.",
)
@_rows_option(
    "--online-min-rows",
    _DEFAULTS.online_min_rows,
    "Feedback rows needed before the online metric counts.",
)
@click.option("--interval", default=_DEFAULTS.interval, help="Evaluation interval of the group.")
@click.option("--severity", default=_DEFAULTS.severity, show_default=True, help="severity label.")
@click.option("--name", default="kubeloop-rules", show_default=True, help="Object name.")
@click.option("--namespace", default=None, help="Object namespace.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_label,
    help="KEY=VALUE label on the object (repeatable), e.g. the ruleSelector's release=...",
)
def rules(
    fmt: Format,
    drift_for: str,
    min_window_rows: int,
    online_for: str,
    online_floor: float,
    online_min_rows: int,
    interval: str | None,
    severity: str,
    name: str,
    namespace: str | None,
    labels: dict[str, str],
) -> None:
    """Print the Prometheus alert rules that trigger retraining (see docs/monitoring.md)."""
    try:
        options = RuleOptions(
            drift_for=drift_for,
            min_window_rows=min_window_rows,
            online_for=online_for,
            online_floor=online_floor,
            online_min_rows=online_min_rows,
            interval=interval,
            severity=severity,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(render(fmt, options, name=name, namespace=namespace, labels=labels), nl=False)
