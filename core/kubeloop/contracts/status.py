"""Status words the operator writes and everyone else (tests, the CLI, Argo CD) reads."""

from __future__ import annotations

from typing import Final

#: The condition every kind carries.
READY: Final = "Ready"

#: TrainingJob phases after which nothing more happens to it.
TRAINING_TERMINAL_PHASES: tuple[str, ...] = ("Succeeded", "Failed", "Rejected")
