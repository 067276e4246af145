"""The routing contract: what share of requests the stable pods send to the canary.

The operator writes one :class:`RoutingConfig` as JSON into the routing ConfigMap
(key :data:`ROUTING_FILE`); the stable serving pods watch the mounted file and
forward that share. A file with no canary (``canary_url`` null or weight 0)
routes nothing.
"""

from __future__ import annotations

import json
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

#: The ConfigMap key, and so the file name, of the routing config.
ROUTING_FILE: Final = "routing.json"


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
        return json.dumps(doc, sort_keys=True)
