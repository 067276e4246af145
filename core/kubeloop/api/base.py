"""Building blocks shared by every Kubeloop API type.

The pydantic models are the single source of truth: they validate objects in
Python and generate the CustomResourceDefinitions (see ``crdgen``). A rule that
spans several fields is declared once as a :class:`Rule` carrying both its CEL
expression (enforced by the API server) and the equivalent Python check
(enforced when a model is built here); a unit test proves the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "kubeloop.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Rule:
    """One ``x-kubernetes-validations`` entry and its Python twin.

    ``check`` receives the validated model and returns True when the object is
    valid. Transition rules (those using ``oldSelf``) have no Python twin: they
    compare two stored versions, which only the API server sees.
    """

    cel: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class KubeModel(BaseModel):
    """Base of every spec/status part: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )

    #: Cross-field rules of this object, emitted as ``x-kubernetes-validations``.
    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.to_schema() for rule in cls.rules]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _int_or_string_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": (
                r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
                r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
            ),
        }
    )


#: A Kubernetes resource quantity such as ``500m``, ``2Gi`` or ``1``.
Quantity = Annotated[int | str, Field(json_schema_extra=_int_or_string_schema)]

#: A Go-style duration such as ``30s``, ``5m`` or ``1h30m``.
Duration = Annotated[
    str,
    Field(pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$", examples=["30s", "5m", "1h"]),
]

#: A DNS-1123 label, the shape of names Kubeloop derives child objects from.
DNSLabel = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]

#: A DNS-1123 subdomain, the shape of most object names (a Secret's, for one).
DNSSubdomain = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]

#: A free-form JSON object, kept as is by the API server.
FreeForm = Annotated[
    dict[str, Any],
    Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
]


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def duration_seconds(value: str) -> float:
    """Seconds in a Go-style duration (``1h30m`` -> 5400.0)."""
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


class ResourceRequirements(KubeModel):
    """CPU/memory requests and limits, as in a Pod's container."""

    requests: dict[str, Quantity] | None = Field(
        None, description="Minimum resources, e.g. {cpu: 500m, memory: 1Gi}."
    )
    limits: dict[str, Quantity] | None = Field(
        None, description="Maximum resources, e.g. {cpu: '2', memory: 4Gi}."
    )


class Condition(KubeModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Kind of condition, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word saying why the condition is in this state.",
        max_length=1024,
    )
    message: str = Field("", description="Human-readable detail.", max_length=32768)
    last_transition_time: datetime = Field(
        description="When the status last changed (not when it was last written)."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation the condition was set for."
    )


class StatusBase(KubeModel):
    """What every Kubeloop status carries."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Standard conditions; Ready is always present once reconciled.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class ObjectMeta(BaseModel):
    """The subset of metadata Kubeloop reads; the rest is kept untouched."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
