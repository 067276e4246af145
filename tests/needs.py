"""The tools a test runs: found, or a failure that says how to get them, never a skip.

``make test`` installs every tool the suite needs (``make toolchain``, ``make
monitoring-tools``, ``make postgresql-tools``, ``make chart-tools``, ``make browser-tools``,
``make images``), so a missing one is a broken setup that must not pass quietly.
"""

from __future__ import annotations

import shutil
from typing import NoReturn

import pytest

MONITORING = "run `make monitoring-tools` (hack/install-monitoring.sh: Debian's Prometheus)"
POSTGRESQL = "run `make postgresql-tools` (hack/install-postgresql.sh: Debian's postgresql)"
LUA = "run `make chart-tools` (Debian packages lua5.4 lua5.1)"
BROWSER = "run `make browser-tools` (hack/install-browser.sh: Debian's chromium)"
DOCKER = "run `make images` (hack/images.sh installs and starts Docker and builds the images)"

#: The Prometheus tools by role, as Debian names them (Alertmanager: prometheus-alertmanager).
PROMETHEUS_TOOLS = {
    "promtool": ("promtool",),
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
}


def missing(what: str, how: str) -> NoReturn:
    """Fail the test: ``what`` is missing; ``how`` says how to get it."""
    pytest.fail(f"{what}: {how}", pytrace=False)


def tool(*names: str, how: str) -> str:
    """The path of the first of ``names`` on PATH."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    missing(f"{' or '.join(names)} not found on PATH", how)


def prometheus_tool(role: str) -> str:
    """promtool, prometheus or alertmanager (``PROMETHEUS_TOOLS``)."""
    return tool(*PROMETHEUS_TOOLS[role], how=MONITORING)


def toolchain_binary(name: str) -> str:
    """A binary hack/toolchain.sh builds (helm, kubectl, ...); its error says how."""
    from kubeloop.devcluster.binaries import Binaries, MissingBinaryError

    try:
        return str(Binaries.resolve((name,))[name])
    except MissingBinaryError as err:
        missing(name, str(err))


def chromium() -> str:
    """Debian's chromium, for the Playwright tests (Playwright's own browser download is
    not used: the tests launch this one with ``executable_path``)."""
    return tool("chromium", "chromium-browser", how=BROWSER)
