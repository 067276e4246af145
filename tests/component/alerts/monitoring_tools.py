"""Finding the Prometheus tools from Debian's packages (hack/install-monitoring.sh)."""

from __future__ import annotations

import os
import shutil

import pytest

#: Debian installs Alertmanager as prometheus-alertmanager.
NAMES = {
    "promtool": ("promtool",),
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
}


def tool(name: str) -> str:
    """The tool's path; a skip on a developer machine without it, a failure in CI."""
    for candidate in NAMES[name]:
        found = shutil.which(candidate)
        if found:
            return found
    message = f"{name} not found: run hack/install-monitoring.sh (make monitoring-tools)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
