"""Every tier: the shared helper modules beside this file (``needs``, ``helmchart``).

``--import-mode=importlib`` puts no test folder on ``sys.path``; the helpers every tier
imports by name live here.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
