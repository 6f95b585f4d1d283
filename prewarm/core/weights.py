"""Semi-warm weights, the rules: which model a target loads, when its weights are needed on a
node before a pod exists, and which nodes hold them.

- Needed: the stored floor is above zero, or it is zero and its next scheduled change (a cron
  window opening, a forecast step) is within `lead`, the cold-start time: the floor can only rise
  from zero, so the weights land before the replica is asked for.
- Where: among the nodes the target's pods may run on, the `max(floor, 1) + spare` nodes with the
  highest rendezvous score sha256(target, node). Every node's follower computes the same set on its
  own, a node joining or leaving moves only the targets it wins or held, and a rising floor adds
  nodes without moving the ones already chosen.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

DEFAULT_REVISION = "main"
SPARE_NODES = 1  # one node more than the floor needs: the next replica lands on warm weights too


@dataclasses.dataclass(frozen=True, slots=True)
class WeightsSettings:
    """The model a target's pods load: its hub id, the revision, and the model store folder (or
    URL) the weights are staged from."""

    model: str
    source: str
    revision: str = DEFAULT_REVISION


def weights_needed(*, floor: int, next_change: datetime | None, now: datetime, lead: timedelta) -> bool:
    """Whether a target's weights should be on its nodes now (see the module's doc)."""
    if floor > 0:
        return True
    return next_change is not None and next_change - now <= lead


def nodes_wanted(floor: int, *, spare: int = SPARE_NODES) -> int:
    """How many nodes hold a target's weights: as many as its floor needs, at least one, plus `spare`."""
    return max(floor, 1) + max(spare, 0)


def rendezvous_score(target: str, node: str) -> int:
    """The node's score for the target (highest random weight hashing)."""
    return int.from_bytes(hashlib.sha256(f"{target}\0{node}".encode()).digest()[:8], "big")


def place_weights(target: str, nodes: Iterable[str], count: int) -> tuple[str, ...]:
    """The `count` nodes (of `nodes`) that hold the target's weights, highest score first."""
    ranked = sorted(set(nodes), key=lambda node: (-rendezvous_score(target, node), node))
    return tuple(ranked[: max(count, 0)])
