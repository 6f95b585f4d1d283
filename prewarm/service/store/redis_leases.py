"""Decider leases in Redis: one key per target holding a fencing token, taken and renewed by script."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aioredis_cluster
from redis.commands.core import AsyncScript

from prewarm.service import redis_scripts
from prewarm.service.store.cluster_scripts import ScriptCall, raise_any_failure, run_script_calls
from prewarm.service.store.leases import Lease
from prewarm.service.store.redis_keys import MAX_ENCODED_KEYS, EncodedKeys, slot

MAX_LEASES_PER_CALL = 256
MAX_RENEWALS_PER_CALL = 2048  # a renewal is one GET and one PEXPIRE: a short script even at this size
EPOCH_TTL = timedelta(days=30)  # a target's lease epoch outlives any token that could still be in use


class RedisLeases:
    """The LeaseStore of a RedisStore; `calling` maps each call's failures as the store does."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis_cluster.RedisCluster,
        *,
        calling: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, aioredis_cluster.RedisCluster)
        self._calling = calling
        self._claim = client.register_script(redis_scripts.CLAIM_LEASES)
        self._release = client.register_script(redis_scripts.RELEASE_LEASES)
        self._renew = client.register_script(redis_scripts.RENEW_LEASES)
        self._leader = EncodedKeys("leader")
        self._epoch = EncodedKeys("epoch")
        self._tokens: dict[str, bytes] = {}  # most targets share a token ("1|replica"): encoded once

    async def claim_leases(
        self, targets: Sequence[str], *, holder: str, held: Mapping[str, str], ttl: float, acquire: bool = True
    ) -> list[Lease]:
        """Renew the leases `held` (target -> token), take free ones when `acquire`, report the rest.

        A taken lease gets a new token (the target's epoch, incremented, and `holder`), so a
        former holder's token never matches again. Raises StateUnavailable.
        """
        ttl_ms = max(1, round(ttl * 1000))
        chunks = self._slot_chunks(targets)
        calls: list[ScriptCall] = []
        for chunk in chunks:
            keys = [k for target in chunk for k in (self._leader(target), self._epoch(target))]
            args: list[str | int] = [holder, ttl_ms, 1 if acquire else 0, int(EPOCH_TTL.total_seconds())]
            args += [held.get(target, "") for target in chunk]
            calls.append((keys, args))
        results: list[Lease] = []
        for chunk, reply in zip(chunks, await self._call_all(self._claim, calls), strict=True):
            for target, (holds, token, remaining_ms) in zip(chunk, reply, strict=True):
                text = token.decode() if isinstance(token, bytes) else str(token)
                results.append(
                    Lease(
                        target=target,
                        token=text if int(holds) else None,
                        holder=text,
                        remaining=max(0, int(remaining_ms)) / 1000,
                    )
                )
        return results

    async def renew_leases(self, held: Mapping[str, str], *, ttl: float) -> list[str]:
        """Renew what `held` still holds, every chunk's call sent at once (a renewal of all a replica
        holds takes one round trip, not one per chunk); the replies name only the leases lost."""
        ttl_ms = max(1, round(ttl * 1000))
        chunks = self._slot_chunks(list(held), per_call=MAX_RENEWALS_PER_CALL)
        calls: list[ScriptCall] = [
            ([self._leader(t) for t in chunk], [ttl_ms, *(self._token(held[t]) for t in chunk)]) for chunk in chunks
        ]
        replies = await self._call_all(self._renew, calls)
        return [chunk[int(position) - 1] for chunk, reply in zip(chunks, replies, strict=True) for position in reply]

    async def release_leases(self, held: Mapping[str, str]) -> None:
        """Give up the leases `held` (target -> token) that still hold those tokens."""
        chunks = self._slot_chunks(list(held))
        await self._call_all(
            self._release, [([self._leader(t) for t in chunk], [held[t] for t in chunk]) for chunk in chunks]
        )

    async def _call_all(self, script: AsyncScript, calls: Sequence[ScriptCall]) -> list[Any]:
        """Every call at once: on one server each on its own connection, on a Cluster through one
        pipeline (a call per hash slot: thousands at 50,000 targets, more than the client's pool)."""
        if not calls:
            return []
        async with self._calling():
            if not isinstance(self._client, aioredis_cluster.RedisCluster):
                return list(await asyncio.gather(*(script(keys=keys, args=args) for keys, args in calls)))
            replies = await run_script_calls(self._client, script, calls)
            raise_any_failure(replies)  # inside `calling`: mapped as a single call's failure would be
        return replies

    def _token(self, token: str) -> bytes:
        encoded = self._tokens.get(token)
        if encoded is None:
            if len(self._tokens) >= MAX_ENCODED_KEYS:
                self._tokens.clear()
            encoded = self._tokens[token] = token.encode()
        return encoded

    def _slot_chunks(self, targets: Sequence[str], *, per_call: int = 0) -> list[list[str]]:
        """Targets in groups one script call may name: a single server takes any, a Cluster one slot."""
        if not self._cluster:
            size = per_call or MAX_LEASES_PER_CALL
            return [list(targets[i : i + size]) for i in range(0, len(targets), size)]
        by_slot: dict[int, list[str]] = {}
        for target in targets:
            by_slot.setdefault(slot(target), []).append(target)
        return list(by_slot.values())
