"""kube-prewarm: keep GPU inference services warm just before users need them.

The public names are the pure core's; adapters are imported from their own modules.
"""

from prewarm.core.ledger import SessionCount, SessionEvent, SessionEventType, SessionLedger
from prewarm.core.policy import FloorDecision, Signals, Source, decide_floor
from prewarm.core.schedule import CronState, CronWindow, evaluate_windows
from prewarm.core.targets import (
    ConfigError,
    ForecastSettings,
    TargetKind,
    TargetRef,
    TargetSpec,
    parse_annotations,
    parse_config_document,
    parse_scaler_metadata,
)

__all__ = [
    "ConfigError",
    "CronState",
    "CronWindow",
    "FloorDecision",
    "ForecastSettings",
    "SessionCount",
    "SessionEvent",
    "SessionEventType",
    "SessionLedger",
    "Signals",
    "Source",
    "TargetKind",
    "TargetRef",
    "TargetSpec",
    "decide_floor",
    "evaluate_windows",
    "parse_annotations",
    "parse_config_document",
    "parse_scaler_metadata",
]
