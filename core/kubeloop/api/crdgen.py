"""Generate the CustomResourceDefinitions in ``crds/`` from the typed models.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural*
OpenAPI v3 schema: no ``$ref``, no ``anyOf`` for optionals, boolean
``exclusiveMinimum``, every node typed. :func:`structural` does that
translation; everything else (descriptions, CEL rules, list types) comes from
the models as declared.

Usage: ``python -m kubeloop.api.crdgen DIR`` writes ``DIR/<plural>.kubeloop.io.yaml``;
``--check`` exits 1 when a file there differs from what the models generate.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import TypeAdapter

from kubeloop.api.base import GROUP, VERSION
from kubeloop.api.v1alpha1 import KINDS, PrinterColumn, Resource
from kubeloop.contracts.generated import sync

_DROP = {"title", "examples", "discriminator"}
_HEADER = "# Generated from kubeloop.api.v1alpha1 by `make crds`; do not edit.\n"


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Translate one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the field's own description wins over the docstring
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
        return structural(node, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        return structural({**options[0], **node}, defs)
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            node["minimum" if key == "exclusiveMinimum" else "maximum"] = node[key]
            node[key] = True
    if "properties" in node or node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        else:
            out[key] = value
    return out


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """The structural schema of one spec or status model."""
    raw = TypeAdapter(model).json_schema(by_alias=True)
    result: dict[str, Any] = structural(raw, raw.get("$defs", {}))
    return result


def _printer_column(column: PrinterColumn) -> dict[str, Any]:
    out: dict[str, Any] = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
    if column.description:
        out["description"] = column.description
    if column.priority:
        out["priority"] = column.priority
    return out


def crd(resource: type[Resource[Any, Any]]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    info = resource.info
    spec_schema = openapi_schema(resource.spec_type())
    status_schema = openapi_schema(resource.status_type())
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubeloop"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": info.short_names,
                "categories": ["kubeloop"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [_printer_column(c) for c in info.printer_columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": (resource.__doc__ or "").strip(),
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(resource: type[Resource[Any, Any]]) -> str:
    return _HEADER + yaml.safe_dump(crd(resource), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    return sync(
        __doc__.splitlines()[0] if __doc__ else "CRDs",
        "crds",
        lambda: {f"{r.info.plural}.{GROUP}.yaml": render(r) for r in KINDS},
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
