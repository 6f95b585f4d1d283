"""The targets a `prewarm serve` process serves, by `namespace/name`: the config file's, then
those discovered (annotated Knative Services, ScaledObjects the scaler is asked about).

One registry per process, built first by the composition root; the decider, listener, scaler,
tuner and leases read it, and whoever cares about targets coming and going follows it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from prewarm.core import targets

log = logging.getLogger(__name__)


class TargetRegistry:
    """`specs` is a live read-only view; `add`/`remove` change it and tell every follower."""

    def __init__(self, specs: Iterable[targets.TargetSpec] = ()) -> None:
        self._specs: dict[str, targets.TargetSpec] = {str(spec.ref): spec for spec in specs}
        self._added: list[Callable[[targets.TargetSpec], None]] = []
        self._removed: list[Callable[[str], None]] = []
        self._changed: list[Callable[[str], None]] = []

    @property
    def specs(self) -> Mapping[str, targets.TargetSpec]:
        """Every target's spec by `namespace/name` (changes as targets come and go)."""
        return self._specs

    def names(self) -> Iterable[str]:
        """The targets' names (for leases to campaign for)."""
        return self._specs.keys()

    def follow(
        self,
        *,
        added: Callable[[targets.TargetSpec], None],
        removed: Callable[[str], None],
        changed: Callable[[str], None] | None = None,
    ) -> None:
        """Be told of each target added (or its spec changed), removed, or whose inputs changed."""
        self._added.append(added)
        self._removed.append(removed)
        if changed is not None:
            self._changed.append(changed)

    def changed(self, target: str) -> None:
        """Something a target's decision reads besides the store changed (its tuning, its forecast)."""
        for callback in self._changed:
            callback(target)

    def add(self, spec: targets.TargetSpec) -> None:
        """Add `spec`, or replace its target's spec; followers hear of it only when it changed."""
        target = str(spec.ref)
        if self._specs.get(target) == spec:
            return
        self._specs[target] = spec
        for callback in self._added:
            callback(spec)

    def remove(self, target: str) -> None:
        """Forget `target`; followers hear of it only when it was known."""
        if self._specs.pop(target, None) is None:
            return
        for callback in self._removed:
            callback(target)
