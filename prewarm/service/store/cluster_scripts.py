"""Many calls of one Lua script on a Redis Cluster, one round trip per node.

A script may only touch the keys of one hash slot, so work over many targets is one call per slot:
thousands of calls for 50,000 targets. Sent one by one and awaited together they need a connection
each (the client's pool per node is bounded, and a call past it fails at once); through a Cluster
pipeline they travel together, grouped per node. A node that does not know the script (restarted,
promoted, flushed) answers NOSCRIPT and ran nothing: the script is loaded on every primary and only
those calls are sent again (a call that ran must never run twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio.cluster as aioredis_cluster
import redis.exceptions
from redis.commands.core import AsyncScript

from prewarm.service.store import errors

ScriptCall = tuple[Sequence[Any], Sequence[Any]]  # (keys, args) of one call


async def run_script_calls(
    client: aioredis_cluster.RedisCluster, script: AsyncScript, calls: Sequence[ScriptCall]
) -> list[Any]:
    """Every call's reply, in order, an exception in place of a call that failed (the caller raises
    it, inside its error mapping: `raise_any_failure`)."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        pipe = client.pipeline()
        for index in todo:
            keys, args = calls[index]
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answered = await pipe.execute(raise_on_error=False)
        unknown = []
        for index, reply in zip(todo, answered, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                unknown.append(index)
            replies[index] = reply
        if not unknown:
            break
        await client.script_load(script.script)  # on every primary
        todo = unknown
    return replies


def raise_any_failure(replies: Sequence[Any]) -> None:
    """Raise a failed call's error, if any: a refusal first (it names a request at fault, as a
    single call's refusal would), else the first failure (a node that could not answer)."""
    failed = [reply for reply in replies if isinstance(reply, Exception)]
    if failed:
        raise next((e for e in failed if errors.is_refusal(e)), failed[0])
