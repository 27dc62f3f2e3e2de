"""Traffic decisions for one request: which version answers it, and whether the shadow gets a copy. Pure.

Randomness comes in from the caller (``draw``, a uniform number in ``[0, 1)``) so that the split is testable with a
seeded generator; shadow sampling hashes the request id instead, so retries of one request are mirrored or not
consistently, and so are the replicas that see it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from capstan.errors import ResourceDoesNotExist
from capstan.serving.spec import DeploymentSpec

PRIMARY = "primary"
"""The version name of the spec's main model in `split_of` (and in a pinning header)."""
CANARY = "canary"
"""The version name of the spec's canary model."""

_HASH_SPACE = 2**64


class UnknownVersion(ResourceDoesNotExist):
    """A request pinned a version the deployment does not have; the message names the known ones."""

    def __init__(self, pinned: str, known: list[str]) -> None:
        super().__init__(f"version {pinned!r} is not served here (known versions: {', '.join(known) or 'none'})")
        self.pinned = pinned
        self.known = known


def choose_version(weights: Mapping[str, float], draw: float, *, pinned: str | None) -> str:
    """The version that answers a request.

    A ``pinned`` version (from a request header) wins whenever it is one of ``weights``' keys, even at weight 0, so a
    canary can be tried before it takes traffic; a pinned name that is not raises `UnknownVersion`. Otherwise
    ``draw`` (uniform in ``[0, 1)``) picks a version with probability proportional to its weight; weights need not
    add up to anything in particular. ``ValueError`` for a draw outside ``[0, 1)`` or weights that are negative,
    not finite or all zero: those are the caller's bugs, not the client's.
    """
    if pinned is not None:
        if pinned in weights:
            return pinned
        raise UnknownVersion(pinned, sorted(weights))
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw!r}")
    total = 0.0
    for version, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of {version!r} must be a finite number >= 0, got {weight!r}")
        total += weight
    if total <= 0:
        raise ValueError(f"no version has a positive weight: {dict(weights)!r}")
    target = draw * total
    cumulative = 0.0
    last = ""
    for version, weight in weights.items():
        if weight <= 0:
            continue
        cumulative += weight
        last = version
        if target < cumulative:
            return version
    return last  # draw * total rounded up to the total: the last version with any weight


def shadow_sampled(request_id: str, percent: float) -> bool:
    """Whether the request with this id is mirrored to the shadow: true for ``percent`` percent of ids, always the
    same answer for the same id (SHA-256 of the id, read as a fraction of 2**64)."""
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise ValueError(f"percent must be between 0 and 100, got {percent!r}")
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    bucket = int.from_bytes(hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return bucket < percent / 100 * _HASH_SPACE


def split_of(spec: DeploymentSpec) -> dict[str, float]:
    """Live-traffic weights in percent: ``{"primary": 100}`` without a canary, else ``{"primary": 100 - t,
    "canary": t}`` (the canary stays listed at 0 % so that it can be pinned). The shadow is not part of the
    split: it receives copies (`shadow_sampled`)."""
    if spec.canary is None:
        return {PRIMARY: 100.0}
    return {PRIMARY: 100.0 - spec.canary.traffic, CANARY: spec.canary.traffic}
