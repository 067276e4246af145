"""The fuzz tier: property-based requests (hypothesis, derandomized) and schema-driven ones
(schemathesis over the server's /openapi.json) against a real ``kubeloop serve`` process,
one per test module.

Models come from the real trainer on small data sets written here: breast cancer (30
numeric features: the per-column and the 2-D tensor paths) and a mixed set (a float, a
nullable float and a string feature: BYTES, NaN as missing).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "component" / "serving"))  # serving_helpers
sys.path.insert(0, str(Path(__file__).parent))  # fuzzing

from fuzzing import register_profile
from serving_helpers import Server, serving, train

CLASSIFY, LOGREG = "classification", "LogisticRegression"

register_profile()


@pytest.fixture(scope="session")
def fuzz_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_breast_cancer

    d = tmp_path_factory.mktemp("fuzz-data")
    bc = load_breast_cancer(as_frame=True).frame
    bc.columns = [c.replace(" ", "_") for c in bc.columns]
    bc.to_csv(d / "cancer.csv", index=False)
    rng = np.random.default_rng(0)
    n = 400
    city = rng.choice(["paris", "rome", "oslo"], n)
    age = rng.normal(40, 10, n).round(1)
    income = rng.normal(50, 15, n).round(2)
    income[rng.random(n) < 0.1] = np.nan
    outcome = np.where((age - 40) / 10 + (city == "rome") > 0.3, "yes", "no")
    frame = {"age": age, "income": income, "city": city, "outcome": outcome}
    pd.DataFrame(frame).to_csv(d / "mixed.csv", index=False)
    return {
        "cancer": train(
            d / "cancer.csv", "target", CLASSIFY, LOGREG, d / "cancer", '{"max_iter": 2000}'
        ),
        "mixed": train(d / "mixed.csv", "outcome", CLASSIFY, LOGREG, d / "mixed"),
    }


@pytest.fixture(scope="module")
def mixed(fuzz_models: dict[str, Path]) -> Iterator[Server]:
    with serving(fuzz_models["mixed"], "--name", "mixed") as server:
        yield server


@pytest.fixture(scope="module")
def cancer(fuzz_models: dict[str, Path]) -> Iterator[Server]:
    with serving(fuzz_models["cancer"], "--name", "cancer") as server:
        yield server


@pytest.fixture(scope="module")
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A keep-alive client to the module's server (the module names it: SERVER)."""
    server: Server = request.getfixturevalue(request.module.SERVER)
    with server.client() as client:
        yield client
