"""What one attempt to apply a floor did: shared by the reconciler and every actuator."""

from __future__ import annotations

import dataclasses
import enum


class Outcome(enum.Enum):
    """What one attempt did. A failure that may pass is raised instead, and retried."""

    APPLIED = "applied"  # the floor is in place (written, or found already so)
    SKIPPED = "skipped"  # not for this actuator here: another kind of target, or another replica leads
    REFUSED = "refused"  # deliberately not written (e.g. where it goes is unknown); tried again later


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """An attempt's outcome and, when refused or skipped, why."""

    outcome: Outcome
    reason: str = ""


APPLIED = Result(Outcome.APPLIED)
