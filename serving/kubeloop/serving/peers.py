"""Feedback for a request another replica answered: asked of the deployment's other pods.

A label posted through the Service reaches one pod, and a pod remembers only the
predictions it made, so with two replicas (or a canary behind the stable pods) most
labels would land where the request is unknown. The pod that gets the label records
what it knows and forwards the rest, once, to every other pod of the deployment: the
addresses a headless Service's DNS name resolves to (``feedback_peers``, ``host:port``).
A forwarded call carries :data:`FORWARDED_HEADER` and is never forwarded again, and
each pod counts a request's feedback once, so a label is never counted twice.

Chosen over joining labels with the prediction log in a shared sink: this needs no
store shared by the pods, and the online metric stays where the prediction was made,
per version (a canary's labels score the canary).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

#: set on a forwarded feedback call: the receiving pod records, and forwards nothing
FORWARDED_HEADER = "x-kubeloop-forwarded"
#: the caller's credentials, passed on (every pod of a deployment has the same token)
_PASSED_ON = (b"authorization", b"x-kubeloop-token")


@dataclass(frozen=True)
class Forwarded:
    """What the other pods made of the forwarded labels."""

    matched_ids: frozenset[str]
    matched_rows: int
    peers: int
    failed: int


def parse_peers(spec: str) -> list[tuple[str, int]]:
    """``host:port[,host:port…]`` → [(host, port)]; ValueError names what is wrong."""
    peers = []
    for entry in spec.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"feedback peers {entry!r}: expected host:port")
        peers.append((host, int(port)))
    return peers


def forward_body(items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    return {"feedback": [{"id": rid, "truth": truth} for rid, truth in items]}


def passed_on(headers: Mapping[bytes, bytes]) -> dict[str, str]:
    """The headers a forwarded call carries: the caller's credentials and the marker."""
    out = {k.decode("latin-1"): headers[k].decode("latin-1") for k in _PASSED_ON if k in headers}
    out[FORWARDED_HEADER] = "1"
    return out


def merge(answers: Iterable[dict[str, Any] | None]) -> Forwarded:
    """The union of the pods' matched ids, and the rows they scored (a shadow pod scores
    the requests mirrored to it too, for its own version). None: a pod that did not
    answer."""
    matched: set[str] = set()
    rows = peers = failed = 0
    for answer in answers:
        peers += 1
        if answer is None:
            failed += 1
            continue
        matched.update(answer.get("matched_ids") or ())
        rows += int(answer.get("matched") or 0)
    return Forwarded(frozenset(matched), rows, peers, failed)


class FeedbackPeers:
    """The deployment's other pods, found by DNS on each forward (pods come and go)."""

    def __init__(self, spec: str, own: tuple[str, int] | None, timeout: float) -> None:
        self.peers = parse_peers(spec)
        self._own = own
        self._client = httpx.AsyncClient(timeout=timeout)

    async def addresses(self) -> list[tuple[str, int]]:
        """Every (address, port) the names resolve to but this pod's own."""
        loop = asyncio.get_running_loop()
        found: set[tuple[str, int]] = set()
        for host, port in self.peers:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                log.warning("feedback peers %s: %s", host, exc)
                continue
            found.update((str(info[4][0]), port) for info in infos)
        if self._own is not None:
            found.discard(self._own)
        return sorted(found)

    async def forward(
        self, name: str, items: Sequence[tuple[str, Any]], headers: Mapping[bytes, bytes]
    ) -> Forwarded:
        """Offer ``items`` (labels this pod could not match) to every other pod."""
        addresses = await self.addresses()
        body, sent = forward_body(items), passed_on(headers)
        answers = await asyncio.gather(
            *(self._ask(address, name, body, sent) for address in addresses)
        )
        return merge(answers)

    async def _ask(
        self, peer: tuple[str, int], name: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any] | None:
        address, port = peer
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{port}/v2/models/{name}/feedback"
        try:
            reply = await self._client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("feedback forward to %s: %s", address, exc)
            return None
        if reply.status_code != 200:
            log.warning("feedback forward to %s: HTTP %s", address, reply.status_code)
            return None
        answer: dict[str, Any] = reply.json()
        return answer

    async def close(self) -> None:
        await self._client.aclose()
