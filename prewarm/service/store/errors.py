"""Which Redis failures mean "the store cannot serve now" (503) and which "the request was refused"."""

from __future__ import annotations

import redis.exceptions

# Error replies that say the server cannot take writes now, not that the request was wrong.
_UNAVAILABLE_REPLIES = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "OOM",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
    "NOPERM",
    "NOAUTH",
    "WRONGPASS",
)
_UNAVAILABLE_ERRORS = (
    redis.exceptions.ConnectionError,  # refused, reset, auth, loading, a demoted Sentinel master
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.ClusterError,  # cluster down, master down
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,  # no reachable node, slots not covered
    OSError,
    TimeoutError,
)


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the store cannot serve now (503) rather than refusing the request."""
    if isinstance(error, _UNAVAILABLE_ERRORS):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and str(error).startswith(_UNAVAILABLE_REPLIES)


def is_refusal(error: BaseException) -> bool:
    """Whether the store (or the client encoding the call) refused what was asked: a script's error
    reply, a value that cannot be encoded. Anything else unexpected is treated as unavailability."""
    if is_unavailable(error):
        return False
    return isinstance(error, redis.exceptions.ResponseError | redis.exceptions.DataError | UnicodeError)


def short(error: BaseException) -> str:
    """An error in one line of at most 200 characters, for logs and 503 bodies."""
    return (str(error) or type(error).__name__).replace("\n", " ")[:200]
