"""The framework registry and each framework's adapter.

The registry (core) is one table the API and the trainer read, and it imports no ML
library. Each framework trains on a small fixture, converts to ONNX, passes the parity
gate with the training data's labels, and puts the library's own importance in the
model card; bad params fail before any data is read, in one line naming the estimator.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from kubeloop.api.v1alpha1 import TrainingJobSpec
from kubeloop.contracts import frameworks as registry
from kubeloop.contracts.artifacts import OUTPUT_NAMES, ArtifactLayout, ModelMetadata
from kubeloop.trainer import frameworks, model, train
from kubeloop.trainer.frameworks import lightgbm as lgbm

BOOSTED = {
    "XGBClassifier": "xgboost",
    "XGBRegressor": "xgboost",
    "LGBMClassifier": "lightgbm",
    "LGBMRegressor": "lightgbm",
}
TITLES = {"xgboost": "XGBoost", "lightgbm": "LightGBM"}


# ---------------------------------------------------------------- the registry


def test_the_registry_is_one_table_of_unique_names_with_an_adapter_each():
    names = [e.name for e in registry.ALLOWED]
    assert len(names) == len(set(names))
    assert {f.name for f in registry.FRAMEWORKS} == set(frameworks.ADAPTERS)
    for e in registry.ALLOWED:
        assert e.name in registry.ESTIMATORS[e.task]
        assert registry.BY_NAME[e.name] == e
    assert set(BOOSTED) <= set(names)
    assert all(not registry.BY_NAME[n].scaled for n in BOOSTED)  # trees: no scaler


@pytest.mark.parametrize("declared", registry.ALLOWED, ids=lambda e: e.name)
def test_every_declared_estimator_is_importable_under_its_name(declared):
    cls = frameworks.ADAPTERS[declared.framework].estimator_class(declared)
    assert cls.__name__ == declared.name
    assert callable(cls.fit)


def test_the_declarations_import_no_ml_library():
    """The operator image (no scikit-learn, XGBoost or LightGBM) reads them."""
    code = (
        "import sys, kubeloop.contracts.frameworks, kubeloop.api.v1alpha1; "
        "print([m for m in ('sklearn', 'xgboost', 'lightgbm', 'onnxmltools', 'numpy') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def spec(task: str, estimator: str, params: dict[str, Any] | None = None) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "modelName": "m",
            "task": task,
            "target": "target",
            "estimator": {"className": estimator, "params": params or {}},
        }
    )


@pytest.mark.parametrize("name", BOOSTED)
def test_the_api_admits_each_boosted_estimator_for_its_task_only(name):
    task = registry.BY_NAME[name].task
    assert spec(task, name).estimator.class_name == name
    other = "regression" if task == "classification" else "classification"
    with pytest.raises(ValueError, match="must name an allow-listed estimator"):
        spec(other, name)


# ---------------------------------------------------------------- train, convert, parity


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Binary (text labels, a text column, gaps), multiclass (labels 10/20/30), regression."""
    root = tmp_path_factory.mktemp("boosted")
    cancer = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, 4, 5, -1]]
    cancer["grade"] = np.where(cancer["mean radius"] > 14, "high", "low")
    cancer.loc[cancer.index[::13], "mean texture"] = np.nan
    cancer["target"] = np.where(cancer["target"] == 1, "benign", "malignant")
    iris = load_iris(as_frame=True).frame
    iris["target"] = iris["target"] * 10 + 10
    diabetes = load_diabetes(as_frame=True).frame
    paths = {"binary": root / "b.csv", "multiclass": root / "m.csv", "regression": root / "r.csv"}
    cancer.to_csv(paths["binary"], index=False)
    iris.to_csv(paths["multiclass"], index=False)
    diabetes.to_csv(paths["regression"], index=False)
    return paths


def trained(files, tmp_path, data: str, name: str) -> tuple[ModelMetadata, Path]:
    task = registry.BY_NAME[name].task
    run = train.Run(
        spec=spec(task, name, {"n_estimators": 30}),
        data_uri=str(files[data]),
        out=str(tmp_path),
        name="m",
    )
    summary = train.train(run)
    assert summary.status == "succeeded"
    return ModelMetadata.model_validate_json((tmp_path / ArtifactLayout.METADATA).read_text()), (
        tmp_path
    )


CASES = [
    ("binary", "XGBClassifier"),
    ("multiclass", "XGBClassifier"),
    ("regression", "XGBRegressor"),
    ("binary", "LGBMClassifier"),
    ("multiclass", "LGBMClassifier"),
    ("regression", "LGBMRegressor"),
]


@pytest.mark.parametrize(("data", "name"), CASES, ids=[f"{n}-{d}" for d, n in CASES])
def test_each_boosted_estimator_trains_converts_and_passes_parity(files, tmp_path, data, name):
    meta, out = trained(files, tmp_path, data, name)
    assert meta.parity is not None
    assert meta.parity.passed
    assert meta.parity.label_mismatches == 0
    assert meta.parity.max_abs_diff <= meta.parity.tolerance == 1e-4  # scikit-learn's
    graph = onnx.load(out / ArtifactLayout.MODEL).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES[meta.task])
    framework = BOOSTED[name]
    assert framework in meta.lineage.libraries
    assert "onnxmltools" in meta.lineage.libraries


def test_classifiers_answer_with_the_data_s_labels(files, tmp_path):
    """XGBoost itself takes 0..n-1 only; the served model still says 'benign' or 10/20/30."""
    for data, labels in (("binary", ["benign", "malignant"]), ("multiclass", [10, 20, 30])):
        for name in ("XGBClassifier", "LGBMClassifier"):
            meta, out = trained(files, tmp_path / f"{name}-{data}", data, name)
            assert meta.classes == labels
            sess = model.session((out / ArtifactLayout.MODEL).read_bytes())
            frame = pd.read_csv(files[data]).drop(columns="target")
            features = model.Features.of(frame, list(frame.columns))
            got = model.onnx_predict(sess, features, features.prepare(frame.iloc[:40]))
            assert set(got["label"].reshape(-1).tolist()) <= set(labels)


@pytest.mark.parametrize("name", BOOSTED)
def test_native_importance_is_in_model_json_and_the_card(files, tmp_path, name):
    data = "regression" if registry.BY_NAME[name].task == "regression" else "binary"
    meta, out = trained(files, tmp_path, data, name)
    native = meta.native_importance
    assert native is not None
    assert native.kind == "total gain"
    columns = [c for c in pd.read_csv(files[data]).columns if c != "target"]
    assert sorted(native.values) == sorted(columns)  # one-hot columns summed per input
    assert sum(native.values.values()) == pytest.approx(1.0)
    assert list(native.values.values()) == sorted(native.values.values(), reverse=True)
    card = (out / ArtifactLayout.CARD).read_text()
    title = TITLES[BOOSTED[name]]
    assert f"## Feature importance ({title}: total gain, training split)" in card
    top = next(iter(native.values))
    assert f"| {top} | {native.values[top]:.4f} |" in card
    assert f"`{name}` ({title}) in a pipeline with median imputation\n" in card  # no scaling


def test_scikit_learn_trees_report_impurity_importance_and_linear_models_none(files, tmp_path):
    meta, _ = trained(files, tmp_path / "rf", "binary", "RandomForestClassifier")
    assert meta.native_importance is not None
    assert meta.native_importance.kind == "mean decrease in impurity"
    ridge = train.Run(
        spec("regression", "Ridge"), str(files["regression"]), str(tmp_path / "r"), "m"
    )
    train.train(ridge)
    meta = ModelMetadata.model_validate_json((tmp_path / "r" / ArtifactLayout.METADATA).read_text())
    assert meta.native_importance is None
    assert "## Feature importance (scikit-learn" not in (tmp_path / "r" / "card.md").read_text()


# ---------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("XGBClassifier", {"max_depth": -1}, "estimator XGBClassifier: value -1 for Parameter"),
        ("XGBClassifier", {"booster": "nope"}, "estimator XGBClassifier: Unknown gbm type nope"),
        ("XGBRegressor", {"no_such": 1}, "estimator XGBRegressor: unexpected keyword argument"),
        ("LGBMClassifier", {"num_leaves": 1}, "estimator LGBMClassifier: Check failed: (num_le"),
        ("LGBMRegressor", {"min_data_in_leaf": 3}, "unexpected keyword argument 'min_data_in"),
        ("LogisticRegression", {"C": -1}, "estimator LogisticRegression: The 'C' parameter"),
        ("RandomForestClassifier", {"depth": 3}, "unexpected keyword argument 'depth'"),
    ],
)
def test_bad_params_fail_in_one_line_naming_the_estimator(capfd, name, params, message):
    with pytest.raises(model.SpecError) as caught:
        model.make_estimator(registry.BY_NAME[name].task, name, params, 0)
    assert message in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
    assert " at /" not in str(caught.value)  # no native source location
    assert capfd.readouterr().err == ""  # LightGBM's native log stays out of stderr


def test_search_space_values_are_checked_by_each_framework():
    est = model.make_estimator("classification", "LGBMClassifier", {}, 0)
    with pytest.raises(model.SpecError, match=r"search\.space\.num_leaves: Check failed"):
        model.check_search_space(est, {"num_leaves": [8, 1]})
    with pytest.raises(model.SpecError, match="LGBMClassifier has no parameter 'leaves'"):
        model.check_search_space(est, {"leaves": [8]})
    model.check_search_space(est, {"num_leaves": [4, 8], "learning_rate": [0.05, 0.1]})


def test_unknown_estimators_are_refused_with_the_allow_list():
    with pytest.raises(model.SpecError, match="'XGBRanker' is not allowed for classification"):
        model.make_estimator("classification", "XGBRanker", {}, 0)


def test_defaults_apply_unless_given_and_the_seed_is_the_split_s():
    est = model.make_estimator("regression", "LGBMRegressor", {"n_jobs": 2}, 7)
    assert est.get_params()["n_jobs"] == 2
    assert est.get_params()["verbose"] == -1
    assert est.get_params()["random_state"] == 7


# ---------------------------------------------------------------- LightGBM thresholds


def test_float32_down_is_the_largest_float32_not_above():
    values = np.random.default_rng(1).normal(scale=100, size=10_000)
    down = lgbm.float32_down(values)
    assert np.all(down <= values)
    assert np.all(down.astype(np.float32).astype(np.float64) == down)
    above = np.nextafter(down.astype(np.float32), np.float32(np.inf)).astype(np.float64)
    assert np.all(above > values)


def test_aligned_lightgbm_agrees_with_its_export_where_a_threshold_rounded_up():
    """Rows sitting exactly on float32(t) > t: LightGBM sends them right, an export of the
    unaligned booster left (its float32 threshold is the row's value). Aligned, the export
    agrees, and LightGBM's own predictions have not moved."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, 3)).astype(np.float32), columns=["a", "b", "c"])
    y = frame["a"] * 2 - frame["b"] + rng.normal(scale=0.1, size=400)
    features = model.Features.of(frame, ["a", "b", "c"])
    est = model.make_estimator("regression", "LGBMRegressor", {"n_estimators": 30}, 0)
    pipeline = model.build_pipeline(features, est).fit(features.prepare(frame), y)
    probes = rows_on_rounded_up_thresholds(pipeline.named_steps["estimator"], frame)
    assert len(probes) > 0

    def exported() -> np.ndarray:
        sess = model.session(model.export(pipeline, features, "regression").SerializeToString())
        return model.onnx_predict(sess, features, probes)["variable"].reshape(-1)

    before, plain = pipeline.predict(probes), pipeline.predict(frame)
    assert np.max(np.abs(exported() - before)) > 1e-3  # unaligned: the export disagrees
    model.align(pipeline)
    np.testing.assert_array_equal(pipeline.predict(probes), before)
    np.testing.assert_array_equal(pipeline.predict(frame), plain)
    np.testing.assert_allclose(exported(), before, rtol=1e-5, atol=1e-5)


def rows_on_rounded_up_thresholds(est: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Copies of the first row with one feature set to float32(t) for each threshold t of
    the booster that float32 rounds up."""
    rows = []
    for tree in est.booster_.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "threshold" not in node:
                continue
            t = float(node["threshold"])
            if float(np.float32(t)) > t:
                row = frame.iloc[0].copy()
                row[frame.columns[node["split_feature"]]] = np.float32(t)
                rows.append(row)
            stack += [node["left_child"], node["right_child"]]
    return pd.DataFrame(rows).astype(np.float32).reset_index(drop=True)


def test_a_search_over_xgboost_clones_the_label_keeping_classifier(files, tmp_path):
    body = spec("classification", "XGBClassifier", {"n_estimators": 20}).to_wire()
    body["search"] = {"space": {"max_depth": [2, 3]}, "cv": 2, "metric": "roc_auc"}
    run = train.Run(
        spec=TrainingJobSpec.model_validate(body),
        data_uri=str(files["binary"]),
        out=str(tmp_path),
        name="m",
    )
    assert train.train(run).status == "succeeded"
    meta = ModelMetadata.model_validate_json((tmp_path / ArtifactLayout.METADATA).read_text())
    assert sorted(t["params"]["max_depth"] for t in meta.search or []) == [2, 3]
    assert meta.classes == ["benign", "malignant"]
    assert meta.parity is not None
    assert meta.parity.passed


@pytest.mark.parametrize(
    ("name", "objective"), [("XGBClassifier", "multi:softprob"), ("LGBMClassifier", "multiclass")]
)
def test_a_multiclass_objective_passes_the_check_and_trains(files, tmp_path, name, objective):
    """The check fits on a three-class sample too: a param that suits only multiclass data
    is not refused for the two-class one."""
    model.make_estimator("classification", name, {"objective": objective}, 0)
    run = train.Run(
        spec=spec("classification", name, {"objective": objective, "n_estimators": 20}),
        data_uri=str(files["multiclass"]),
        out=str(tmp_path),
        name="m",
    )
    assert train.train(run).status == "succeeded"
    meta = ModelMetadata.model_validate_json((tmp_path / ArtifactLayout.METADATA).read_text())
    assert meta.parity is not None
    assert meta.parity.passed


def test_the_export_lists_its_opsets_in_one_order():
    """The converter's opset order varies between processes; the export sorts it, so one
    fit gives one sha256 (a search across pods refits the serial winner byte for byte)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = (frame["a"] > 0).astype(int)
    features = model.Features.of(frame, ["a", "b"])
    est = model.make_estimator("classification", "RandomForestClassifier", {"n_estimators": 3}, 0)
    pipeline = model.build_pipeline(features, est).fit(features.prepare(frame), y)
    domains = [o.domain for o in model.export(pipeline, features, "classification").opset_import]
    assert domains == sorted(domains) == ["", "ai.onnx.ml"]
