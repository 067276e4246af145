"""Request-body schemas for the OpenAPI document (the routes read raw bodies, so
FastAPI cannot derive them)."""

from __future__ import annotations

from typing import Any

from kubeloop.serving.tensors import DATATYPES

INFER_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "datatype", "data"],
                            "properties": {
                                "name": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer"}},
                                "datatype": {"type": "string", "enum": list(DATATYPES)},
                                "parameters": {"type": "object"},
                                "data": {"type": "array"},
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                },
            }
        }
    },
}
V1_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "array",
                        "items": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                    }
                },
            }
        }
    },
}
FEEDBACK_BODY: dict[str, Any] = {
    "required": True,
    "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
}
