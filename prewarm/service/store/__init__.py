"""Durable state behind the decision loop: sessions, dedup keys, arrival counters and decisions.

`MemoryStore` is the embedded default (one process, lost on exit). `RedisStore` keeps the same
state in Redis (one server, Sentinel or Cluster), shared by every replica, announces changes on
pub/sub, and holds the per-target leases (`Store.leases`) that make one replica the decider of
each target. Both write a batch of intents all or nothing, and both bound their memory.
"""

from prewarm.service.store.build import build_store
from prewarm.service.store.codec import decode_decision, encode_decision
from prewarm.service.store.leases import Lease, LeaseLost, LeaseStore
from prewarm.service.store.memory import MemoryStore
from prewarm.service.store.protocol import (
    ARRIVAL_HISTORY,
    DEDUP_TTL,
    BatchRejected,
    ChangeListener,
    DecisionListener,
    IngestResult,
    Intent,
    ResyncListener,
    StateUnavailable,
    Store,
)
from prewarm.service.store.redis_store import RedisStore

__all__ = [
    "ARRIVAL_HISTORY",
    "DEDUP_TTL",
    "BatchRejected",
    "ChangeListener",
    "DecisionListener",
    "IngestResult",
    "Intent",
    "Lease",
    "LeaseLost",
    "LeaseStore",
    "MemoryStore",
    "RedisStore",
    "ResyncListener",
    "StateUnavailable",
    "Store",
    "build_store",
    "decode_decision",
    "encode_decision",
]
