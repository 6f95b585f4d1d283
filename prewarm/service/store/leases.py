"""The per-target decider leases a shared store keeps, apart from the state every store keeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol


class LeaseLost(RuntimeError):
    """A fenced decision write was refused: this replica no longer holds the target's lease."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """One target's decider lease as a claim found it.

    `token` is this holder's fencing token when it holds the lease now, else None; `holder` is
    the token of whoever holds it ('' for nobody); `remaining` the seconds until it expires.
    """

    target: str
    token: str | None
    holder: str
    remaining: float


class LeaseStore(Protocol):
    """Lease operations: claim and renew with fencing tokens, release. Every call may raise StateUnavailable."""

    async def claim_leases(
        self, targets: Sequence[str], *, holder: str, held: Mapping[str, str], ttl: float, acquire: bool = True
    ) -> list[Lease]:
        """Renew the leases `held` (target -> token), take free ones when `acquire`, report the rest.

        A taken lease gets a new token, so a former holder's token never matches again.
        """
        ...

    async def renew_leases(self, held: Mapping[str, str], *, ttl: float) -> list[str]:
        """Renew the leases `held` (target -> token) that still hold those tokens; return the
        targets whose lease did not (another holder took it, or it expired)."""
        ...

    async def release_leases(self, held: Mapping[str, str]) -> None:
        """Give up the leases `held` (target -> token) that still hold those tokens."""
        ...
