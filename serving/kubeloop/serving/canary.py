"""Canary forwarding: the stable server sends a share of inference requests to a
canary server (exact weights without a service mesh), or mirrors them (shadow).

The share is kept exact by error diffusion (smooth weighted round-robin of two) rather
than coin flips: after ``n`` requests the number forwarded is ``floor(n * weight / 100)``
(±1), spread evenly, in every worker process, so any number of workers and pods add up
to the target. A request carrying the sticky header (``sticky_header``) is placed by a
hash of its value instead, so one caller stays on one version while the weight stands.
The weight and upstream change at run time through the routing ConfigMap the operator
writes (:class:`kubeloop.contracts.routing.RoutingConfig`), followed through the API
(:mod:`kubeloop.serving.kubewatch`) and, as start-up value and fallback, its mounted file:
``{"canary_url": "http://canary:8080", "weight": 10, "shadow": false, "canary_version": 3}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubeloop.contracts.routing import RoutingConfig, parse_routing

log = logging.getLogger("kubeloop.serving.canary")


class Splitter:
    """Error-diffusion traffic split: exact share, evenly spread, deterministic."""

    def __init__(self, weight: float = 0.0) -> None:
        self.weight = weight
        self._acc = 0.0

    def set_weight(self, weight: float) -> None:
        if weight != self.weight:
            self.weight = weight
            self._acc = 0.0

    def pick(self, sticky: bytes | None = None) -> bool:
        """True when this request goes to the canary; ``sticky``: the value of the sticky
        header, which decides by its hash alone (and leaves the round-robin alone)."""
        if self.weight <= 0:
            return False
        if sticky is not None:
            return sticky_bucket(sticky) < self.weight
        self._acc += self.weight / 100.0
        if self._acc >= 1.0 - 1e-12:
            self._acc -= 1.0
            return True
        return False


def sticky_bucket(value: bytes) -> float:
    """Where a caller falls in [0, 100): the same value always lands in the same place
    (in every process and pod), so it is on the canary exactly while the weight is
    above its bucket; raising the weight only moves callers from stable to canary."""
    digest = hashlib.blake2b(value, digest_size=8).digest()
    return (int.from_bytes(digest, "big") % 10_000) / 100.0


def read_config(path: Path) -> tuple[RoutingConfig, str]:
    """Parse the config file; returns it with a digest of its bytes."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return parse_routing(raw), digest
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


@dataclass
class ConfigWatcher:
    """Polls a config file (a ConfigMap swaps a symlink, so compare content digests)."""

    path: Path
    digest: str | None = None

    def poll(self) -> RoutingConfig | None:
        """The new config when the file changed and is valid; None otherwise."""
        try:
            config, digest = read_config(self.path)
        except FileNotFoundError:
            if self.digest != "missing":
                self.digest = "missing"
                log.warning("canary config %s is missing; canary off", self.path)
                return RoutingConfig()
            return None
        except (OSError, ValueError) as exc:
            # keep the last good config, say why once per bad content
            if self.digest != f"bad:{exc}":
                self.digest = f"bad:{exc}"
                log.error("canary config %s rejected, keeping the current one: %s", self.path, exc)
            return None
        if digest == self.digest:
            return None
        self.digest = digest
        return config


async def watch(
    watcher: ConfigWatcher, interval: float, apply: Callable[[RoutingConfig], None]
) -> None:
    """Apply config changes until cancelled."""
    while True:
        config = watcher.poll()
        if config is not None:
            apply(config)
        await asyncio.sleep(interval)
