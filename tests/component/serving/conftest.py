"""The server as a real ``kubeloop serve`` process on a random loopback port.

Models come from the real trainer (``kubeloop train``) on small data sets the
fixtures write: breast cancer (all numeric, classification), a mixed
numeric/categorical classification set with a nullable column, and diabetes
(regression).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file

from serving_helpers import Server, serving, train


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_breast_cancer, load_diabetes

    d = tmp_path_factory.mktemp("data")
    bc = load_breast_cancer(as_frame=True).frame
    bc.columns = [c.replace(" ", "_") for c in bc.columns]
    bc.to_csv(d / "cancer.csv", index=False)
    load_diabetes(as_frame=True).frame.to_csv(d / "diabetes.csv", index=False)
    rng = np.random.default_rng(0)
    n = 600
    city = rng.choice(["paris", "rome", "oslo"], n, p=[0.5, 0.3, 0.2])
    age = rng.normal(40, 10, n).round(1)
    income = rng.normal(50, 15, n).round(2)
    income[rng.random(n) < 0.1] = np.nan
    score = (age - 40) / 10 + (city == "rome") * 1.5 + rng.normal(0, 0.5, n)
    pd.DataFrame(
        {"age": age, "income": income, "city": city, "outcome": np.where(score > 0.5, "yes", "no")}
    ).to_csv(d / "mixed.csv", index=False)
    return d


@pytest.fixture(scope="session")
def cancer_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cancer")
    return train(data_dir / "cancer.csv", "target", "classification", "LogisticRegression", out,
                 '{"max_iter": 2000}')  # fmt: skip


@pytest.fixture(scope="session")
def other_cancer_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model of the same data: another version of "cancer"."""
    out = tmp_path_factory.mktemp("cancer_b")
    return train(data_dir / "cancer.csv", "target", "classification", "LogisticRegression", out,
                 '{"C": 0.01, "max_iter": 2000}')  # fmt: skip


@pytest.fixture(scope="session")
def mixed_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixed")
    return train(data_dir / "mixed.csv", "outcome", "classification", "LogisticRegression", out)


@pytest.fixture(scope="session")
def diabetes_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diabetes")
    return train(data_dir / "diabetes.csv", "target", "regression", "Ridge", out)


@pytest.fixture(scope="session")
def cancer_rows(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "cancer.csv").drop(columns=["target"])


@pytest.fixture(scope="module")
def cancer(cancer_model: Path) -> Iterator[Server]:
    with serving(cancer_model, "--name", "cancer") as server:
        yield server


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
