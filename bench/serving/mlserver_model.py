"""Run with the bench venv's python: train the scikit-learn model MLServer serves.

Same data, estimator and parameters as the model kubeloop serves (scikit-learn
is pinned to the project's version in the bench venv), saved with joblib next to
MLServer's model-settings.json.

    python mlserver_model.py CSV TARGET ESTIMATOR PARAMS_JSON OUT_DIR NAME
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import pandas as pd
from sklearn import ensemble, linear_model
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    csv, target, estimator, params, out, name = sys.argv[1:7]
    df = pd.read_csv(csv)
    y = df.pop(target)
    cls = getattr(linear_model, estimator, None) or getattr(ensemble, estimator)
    model = Pipeline([("scale", StandardScaler()), ("est", cls(**json.loads(params)))])
    model.fit(df.to_numpy(dtype="float32"), y)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path / "model.joblib")
    (path / "model-settings.json").write_text(
        json.dumps(
            {
                "name": name,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        )
    )


if __name__ == "__main__":
    main()
