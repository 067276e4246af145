"""Run with the KServe bench venv's python: KServe's Python model server (``kserve``
0.21, PyPI) serving the scikit-learn model on its sklearn path, V1 and V2.

PyPI has the ``kserve`` server library but not KServe's ``sklearnserver`` runtime
package; this is that runtime's model class as KServe writes it: a ``kserve.Model``
that loads ``model.joblib`` and answers with ``get_predict_input`` /
``get_predict_response`` (whole batch, ``predict``). One uvicorn worker, gRPC off,
request and latency logging off (like every server in the benchmark), loopback only.

    python kserve_model.py --model_dir DIR --model_name NAME --http_port PORT
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import joblib
import uvicorn
from kserve import Model, ModelServer
from kserve.model_server import parser as server_parser
from kserve.utils.utils import get_predict_input, get_predict_response

_config_init = uvicorn.Config.__init__


def _loopback(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    """KServe binds 0.0.0.0; the benchmark listens on loopback only."""
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback  # type: ignore[method-assign]


class SKLearnModel(Model):
    """KServe's sklearn runtime: joblib in, ``predict`` over the request's instances."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.ready = False

    def load(self) -> bool:
        self._model = joblib.load(Path(self.model_dir) / "model.joblib")
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        instances = get_predict_input(payload)
        return get_predict_response(payload, self._model.predict(instances), self.name)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[server_parser], conflict_handler="resolve")
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    ModelServer(http_port=args.http_port, workers=1, enable_grpc=False,
                enable_latency_logging=False).start([model])  # fmt: skip


if __name__ == "__main__":
    main()
