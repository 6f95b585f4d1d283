"""The store a `--store` URL names: `memory`, or Redis (one server, Sentinel or Cluster)."""

from __future__ import annotations

from prewarm.core import targets
from prewarm.service import redis_connection
from prewarm.service.store.memory import MemoryStore
from prewarm.service.store.redis_store import RedisStore


def build_store(url: str, *, wait_replicas: int = 0, wait_timeout: float = 1.0) -> MemoryStore | RedisStore:
    """`memory`, or a Redis URL (see redis_connection: one server, Sentinel or Cluster).

    Raises ConfigError naming `--store` (or the wait option) for anything that cannot work.
    """
    if url == "memory":
        if wait_replicas:
            problem = targets.Problem("--redis-wait-replicas", wait_replicas, "needs a Redis store with replicas")
            raise targets.ConfigError("--store", [problem])
        return MemoryStore()
    deployment = redis_connection.parse_redis_url(url)
    if deployment.topology is redis_connection.Topology.CLUSTER and wait_replicas:
        problem = targets.Problem("--redis-wait-replicas", wait_replicas, "is not supported on Redis Cluster")
        raise targets.ConfigError("--store", [problem])
    return RedisStore.from_url(url, wait_replicas=wait_replicas, wait_timeout=wait_timeout)
