"""Following a Sentinel-managed master through a switch within a second, not when the old one fails.

redis-py's Sentinel pool asks the Sentinels for the master only when it opens a connection, so
after a planned failover (`SENTINEL FAILOVER`, an upgrade, a node drain) its open connections
keep writing to the old master, which stays up and says it is a master until Sentinel demotes
it, seconds later, and discards what it took in the meantime. As Jedis and go-redis do, a
`SentinelWatch` subscribes to `+switch-master` on every configured Sentinel; on a notice, and
after every (re)subscription (a gap may have hidden one), it asks that Sentinel for the master
and its config epoch. The other Sentinels hear of a switch from its leader up to seconds after
the promotion, so the watch also follows the leader's `+failover-state-wait-promotion` and asks
the replica being promoted for its `ROLE` until it says master. `FollowedMasterPool` connects
only to the newest master learned that way and drops every connection to the old one, in use
or idle, the pub/sub subscription's included; a command cut off in flight is retried on the new
master. `RoleCheckedConnection` asks `ROLE` on every new connection and refuses a node that is
no longer a master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.sentinel as aioredis_sentinel
import redis.backoff
import redis.exceptions
from redis.asyncio.retry import Retry

from prewarm.service import clock

log = logging.getLogger(__name__)

SWITCH_CHANNEL = "+switch-master"
# The failover's leader announces the replica it has just told to become master; the other
# Sentinels announce the switch only when they hear of it, up to seconds later.
PROMOTING_CHANNEL = "+failover-state-wait-promotion"
_PROMOTION_POLL = 0.01  # seconds between ROLE checks of a replica being promoted
_PROMOTION_WAIT = 10.0  # seconds a promotion is watched for, at most
_BACKOFF_CAP = 0.5  # seconds between resubscription attempts to one Sentinel, at most

Address = tuple[str, int]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FollowedMasterPool(aioredis_sentinel.SentinelConnectionPool):
    """A master pool that connects to the master its watch learned last (newest config epoch); it
    asks the Sentinels itself only until the watch has learned one, or after `ROLE` refused it."""

    def __init__(self, service_name: str, sentinel_manager: aioredis_sentinel.Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.followed: Address | None = None
        self.followed_epoch = -1
        self.switches = 0  # times every connection was dropped for a new master

    async def get_master_address(self) -> Address:
        address: Address = self.followed or await self.sentinel_manager.discover_master(self.service_name)
        if self.master_address != address:
            self.master_address = address
            await self.disconnect(inuse_connections=False)
        return address

    async def adopt_promoted(self, address: Address) -> bool:
        """Follow a replica the failover's leader promoted (it said ROLE master) before the
        Sentinels announce the switch; the switch's config epoch will be newer than the one
        followed, so it is taken as the next one."""
        if self.followed == address:
            return False
        return await self.adopt(address, self.followed_epoch + 1)

    async def adopt(self, address: Address, epoch: int) -> bool:
        """Follow `address` if a Sentinel gives it with a newer config epoch than the one followed.

        When the master changes, drop every connection (in use too: what a command in flight
        wrote to the old master is lost with it, so it is better retried on the new one).
        Whether connections were dropped.
        """
        if self.followed is not None and epoch <= self.followed_epoch:
            return False
        self.followed, self.followed_epoch = address, epoch
        if self.master_address is None or self.master_address == address:
            self.master_address = address
            return False
        self.master_address = address
        self.switches += 1
        await self.disconnect(inuse_connections=True)
        return True

    def refuse(self, address: Address) -> None:
        """`address` is no longer a master: ask the Sentinels again on the next connection."""
        if self.followed == address:
            self.followed = None
        if self.master_address == address:
            self.master_address = None


class RoleCheckedConnection(aioredis_sentinel.SentinelManagedConnection):
    """A master connection that asks `ROLE` once connected and refuses a node that is not a master,
    and that drops itself before a command when the pool has moved to another master meanwhile (a
    switch that raced with its connecting or with the pool dropping its connections): the
    client's retry then connects to the master followed now."""

    def _moved(self) -> bool:
        followed = self.connection_pool.master_address
        return bool(self.connection_pool.is_master and followed is not None and followed != (self.host, self.port))

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.is_connected and self._moved():  # the retry reconnects, to the master followed now
            await self.disconnect()
            raise redis.exceptions.ConnectionError(f"{self.host}:{self.port} is no longer the master followed")
        await super().send_packed_command(command, check_health=check_health)

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        if not self.connection_pool.is_master:
            return
        if self._moved():
            raise redis.exceptions.ConnectionError(f"{self.host}:{self.port} is no longer the master followed")
        await self.send_command("ROLE", check_health=False)
        try:
            role = await self.read_response()
        except redis.exceptions.ResponseError:
            return  # ROLE renamed or not allowed: the first write will tell (READONLY)
        name = _text(role[0]) if isinstance(role, list | tuple) and role else _text(role)
        if name != "master":
            self.connection_pool.refuse((self.host, self.port))
            raise redis.exceptions.ConnectionError(f"{self.host}:{self.port} is a {name}, no longer the master")


class SentinelWatch:
    """Subscribes to `+switch-master` and the leader's promotions on each Sentinel (each on its own,
    so one down costs nothing) and keeps `pool` on the master with the newest config epoch any of
    them gives, or on a replica the leader promoted as soon as it says it is a master."""

    def __init__(
        self,
        sentinels: Sequence[aioredis.Redis],
        *,
        service: str,
        pool: FollowedMasterPool,
        promotion_wait: float = _PROMOTION_WAIT,
    ) -> None:
        self._sentinels = list(sentinels)
        self._service = service
        self._pool = pool
        self._promotion_wait = promotion_wait
        self._tasks: list[asyncio.Task[None]] = []
        self._promotions: dict[Address, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Follow every Sentinel in the background; idempotent."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._follow(sentinel), name=f"sentinel-watch-{index}")
                for index, sentinel in enumerate(self._sentinels)
            ]

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop following; the tasks to wait for."""
        tasks, self._tasks = self._tasks + list(self._promotions.values()), []
        self._promotions.clear()
        for task in tasks:
            task.cancel()
        return [task for task in tasks if not task.done()]

    async def _follow(self, sentinel: aioredis.Redis) -> None:
        backoff = 0.05
        failing = False  # warned once for the failures since the last subscription that worked
        while True:
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(SWITCH_CHANNEL, PROMOTING_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    clock.refuse_if_cancelling()  # redis-py may turn a cancellation into "no message"
                    if message is None:
                        continue
                    if message["type"] == "subscribe" and message["data"] == 1:  # a switch may have gone unheard
                        await self._ask(sentinel)
                        backoff = 0.05
                        if failing:
                            log.info("Sentinel %s: followed again", _name(sentinel))
                            failing = False
                    elif message["type"] == "message":
                        words = _text(message["data"]).split(" ")
                        if _text(message["channel"]) == SWITCH_CHANNEL and words[0] == self._service:
                            await self._ask(sentinel)
                        elif _text(message["channel"]) == PROMOTING_CHANNEL:
                            self._watch_promotion(words)
            except Exception as e:  # a Sentinel down for hours is told once, not at every attempt
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "Sentinel %s: %s; subscribing again in %.2fs (then every %.2fs until it answers)",
                    _name(sentinel),
                    _short(e),
                    backoff,
                    _BACKOFF_CAP,
                )
                failing = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            clock.refuse_if_cancelling()  # a client library may have swallowed our cancellation
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_CAP)

    async def _ask(self, sentinel: aioredis.Redis) -> None:
        """Ask one Sentinel for the master and its config epoch; follow it if it is newer."""
        state = await sentinel.sentinel_master(self._service)
        if not isinstance(state, dict):
            raise redis.exceptions.ResponseError(f"SENTINEL MASTER {self._service} answered {state!r}")
        address = (_text(state["ip"]), int(state["port"]))
        epoch = int(state.get("config-epoch", 0))
        if await self._pool.adopt(address, epoch):
            log.warning(
                "Sentinel %s: the master of %s is now %s:%d (config epoch %d): every connection to the old one dropped",
                _name(sentinel),
                self._service,
                *address,
                epoch,
            )

    def _watch_promotion(self, words: Sequence[str]) -> None:
        """`slave <name> <ip> <port> @ <service> <ip> <port>`: watch that replica become master."""
        if len(words) < 6 or words[5] != self._service or not words[3].isdigit():
            return
        address = (words[2], int(words[3]))
        running = self._promotions.get(address)
        if running is None or running.done():
            self._promotions[address] = asyncio.create_task(self._await_promotion(address), name="sentinel-promotion")

    async def _await_promotion(self, address: Address) -> None:
        """Ask the replica its ROLE until it says master, then follow it; gives up after the
        promotion wait, however slowly the replica answers (each ask is one try: the poll retries)."""
        kwargs = self._pool.connection_kwargs
        node = aioredis.Redis(
            host=address[0],
            port=address[1],
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            socket_timeout=kwargs.get("socket_timeout"),
            socket_connect_timeout=kwargs.get("socket_connect_timeout"),
            retry=Retry(redis.backoff.NoBackoff(), retries=0),
        )
        try:
            async with asyncio.timeout(self._promotion_wait):
                while not await self._says_master(node):
                    clock.refuse_if_cancelling()
                    await asyncio.sleep(_PROMOTION_POLL)
        except TimeoutError:
            return  # not promoted in time (the failover was aborted?): the Sentinels will tell
        finally:
            with contextlib.suppress(Exception):
                await node.aclose()
        try:
            if await self._pool.adopt_promoted(address):
                log.warning(
                    "Sentinel promoted %s:%d to master of %s: every connection to the old one dropped",
                    *address,
                    self._service,
                )
        except (redis.exceptions.RedisError, OSError) as e:  # followed all the same; a connection is left
            log.warning("dropping the connections to the old master of %s: %s", self._service, _short(e))

    @staticmethod
    async def _says_master(node: aioredis.Redis) -> bool:
        try:
            role = await node.role()
        except (redis.exceptions.RedisError, OSError):
            return False  # not reachable yet, or a timeout: ask again
        return isinstance(role, list | tuple) and bool(role) and _text(role[0]) == "master"


def _name(sentinel: aioredis.Redis) -> str:
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _short(error: BaseException) -> str:
    return (str(error) or type(error).__name__).replace("\n", " ")[:200]
