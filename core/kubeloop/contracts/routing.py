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
        return json.dumps(doc, sort_keys=True)
