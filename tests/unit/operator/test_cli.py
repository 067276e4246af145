"""The top-level `kubeloop` command: lazy subcommands and their listed help."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from kubeloop.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_recorded_short_help_is_the_commands_own(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    assert COMMANDS[name][1] == command.get_short_help_str(limit=200)


def test_top_level_help_lists_every_command_without_importing_any() -> None:
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from kubeloop.cli import COMMANDS, main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output)\n"
        "modules = {target.split(':')[0] for target, _ in COMMANDS.values()}\n"
        "print('IMPORTED', sorted(m for m in modules if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "IMPORTED []" in out
    for name in [*COMMANDS, "version"]:
        assert f"\n  {name} " in out
