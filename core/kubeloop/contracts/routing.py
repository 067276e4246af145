"""The routing contract: what share of requests the stable pods send to the canary.

The operator writes one :class:`RoutingConfig` as JSON into the routing ConfigMap
(key :data:`ROUTING_FILE`); the stable serving pods follow it through the API (a
watch on that one ConfigMap), with the mounted file as the start-up value and the
fallback, and forward that share. A file with no canary (``canary_url`` null or weight 0)
routes nothing.
"""

from __future__ import annotations

import json
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field

#: The ConfigMap key, and so the file name, of the routing config.
ROUTING_FILE: Final = "routing.json"
#: An HTTP header name (RFC 9110 token characters that header names use in practice).
STICKY_HEADER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class RoutingConfig(BaseModel):
    """Where the canary is and what share of traffic it gets."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    url: str | None = Field(
        None, alias="canary_url", pattern=r"^https?://", description="Canary base URL."
    )
    weight: float = Field(0.0, ge=0, le=100, description="Percent of requests forwarded.")
    shadow: bool = Field(False, description="Mirror requests instead of forwarding them.")
    canary_version: int | str | None = Field(None, description="The canary's version (info).")
    shadow_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Base URL of a shadow server mirrored beside (not instead of) the canary "
        "forward: its answers are only compared with the stable ones, never returned.",
    )
    shadow_weight: float = Field(
        0.0, ge=0, le=100, description="Percent of stable requests mirrored to shadow_url."
    )
    shadow_version: int | str | None = Field(
        None, description="The shadow's version: the version label of its comparisons."
    )
    sticky_header: str | None = Field(
        None,
        pattern=STICKY_HEADER_PATTERN,
        description="A request header whose value keeps one caller on one version (a hash "
        "of it picks the side); requests without it are split by round-robin.",
    )

    @property
    def active(self) -> bool:
        return self.url is not None and self.weight > 0

    def to_file(self) -> str:
        """The file's JSON: stable key order (an unchanged config is an unchanged
        ConfigMap), whole weights as integers, ``shadow`` only when set."""
        doc: dict[str, object] = {
            "canary_url": self.url,
            "canary_version": self.canary_version,
            "weight": int(self.weight) if self.weight.is_integer() else self.weight,
        }
        if self.shadow:
            doc["shadow"] = True
        if self.shadow_url is not None:  # absent otherwise: older files read the same
            weight = self.shadow_weight
            doc["shadow_url"] = self.shadow_url
            doc["shadow_weight"] = int(weight) if weight.is_integer() else weight
            doc["shadow_version"] = self.shadow_version
        if self.sticky_header is not None:
            doc["sticky_header"] = self.sticky_header
        return json.dumps(doc, sort_keys=True)


def parse_routing(raw: bytes | str) -> RoutingConfig:
    """A routing file's (or ConfigMap value's) config: JSON or YAML, empty means no
    canary. Raises ValueError (pydantic's ValidationError is one) on anything else."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        data: Any = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"not JSON/YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("expected a mapping with canary_url/weight/shadow")
    return RoutingConfig.model_validate(data)
