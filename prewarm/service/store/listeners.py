"""The listeners a store calls back (target changed, decision saved, re-read after a gap, sessions
dropped), registered the same way by every store."""

from __future__ import annotations

from prewarm.service.store.protocol import ChangeListener, DecisionListener, DroppedListener, ResyncListener


class StoreListeners:
    """Holds each kind of listener; a store calls them as its writes and its feed say."""

    def __init__(self) -> None:
        self._change_listeners: list[ChangeListener] = []
        self._decision_listeners: list[DecisionListener] = []
        self._resync_listeners: list[ResyncListener] = []
        self._dropped_listeners: list[DroppedListener] = []

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def add_decision_listener(self, listener: DecisionListener) -> None:
        self._decision_listeners.append(listener)

    def add_resync_listener(self, listener: ResyncListener) -> None:
        self._resync_listeners.append(listener)

    def add_dropped_listener(self, listener: DroppedListener) -> None:
        self._dropped_listeners.append(listener)
