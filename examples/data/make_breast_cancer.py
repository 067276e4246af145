"""Write breast-cancer.csv from the copy of the data set that ships with scikit-learn.

python examples/data/make_breast_cancer.py
"""

from __future__ import annotations

from pathlib import Path

from sklearn.datasets import load_breast_cancer

if __name__ == "__main__":
    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(Path(__file__).with_name("breast-cancer.csv"), index=False, float_format="%.6g")
