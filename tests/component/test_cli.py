"""The installed `kubeloop` console script, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KUBELOOP = Path(sys.executable).with_name("kubeloop")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_commands():
    result = run(str(KUBELOOP), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: kubeloop" in result.stdout
    assert "version" in result.stdout


def test_version_matches_the_distribution():
    result = run(str(KUBELOOP), "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == version("kubeloop")


def test_unknown_command_is_a_usage_error():
    result = run(str(KUBELOOP), "no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_operator_folder_never_shadows_the_standard_library():
    # From the repository root, where `operator/` sits next to the interpreter's cwd.
    result = run(sys.executable, "-c", "import operator, kubeloop.cli; print(operator.__file__)")
    assert result.returncode == 0, result.stderr
    assert "/operator/" not in result.stdout
    assert result.stdout.strip().endswith("operator.py")
