"""Redis deployments named by a `--store` URL, and the redis-py asyncio clients that reach them.

- `redis://[[user]:password@]host:port/db`, `rediss://...` (TLS), `unix:///path?db=N`: one server;
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`: the master of
  `service` as the Sentinels name it, followed through failovers;
- `redis+cluster://[[user]:password@]host:port[,host:port...]`: a Redis Cluster, from seed nodes.

Clients fail fast: short socket timeouts and at most two quick retries, so a request waits a
bounded time and a store that cannot answer becomes `StateUnavailable` upstream.
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aioredis_cluster
import redis.asyncio.connection as aioredis_connection
import redis.asyncio.sentinel as aioredis_sentinel
import redis.backoff
from redis.asyncio.retry import Retry

from prewarm.core import targets
from prewarm.service import sentinel_master

SENTINEL_DEFAULT_PORT = 26379
REDIS_DEFAULT_PORT = 6379
_USAGE = (
    "is not memory, redis://host:port/db, rediss://, unix://, "
    "redis+sentinel://host:port[,host:port]/service[/db] or redis+cluster://host:port[,host:port]"
)


class Topology(enum.Enum):
    """How the store's data is laid out over Redis servers."""

    SERVER = "server"  # one server (a managed endpoint that fails over behind one address counts)
    SENTINEL = "sentinel"  # a master found through Sentinels
    CLUSTER = "cluster"  # hash slots over several masters


@dataclasses.dataclass(frozen=True, slots=True)
class RedisDeployment:
    """A parsed `--store` URL."""

    topology: Topology
    url: str  # as given, for a single server (redis-py parses it); passwords are never logged
    nodes: tuple[tuple[str, int], ...] = ()  # Sentinels, or Cluster seed nodes
    service: str | None = None  # the Sentinel master's name
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        """The URL without credentials, for logs."""
        if self.topology is Topology.SERVER:
            return self.url.split("@")[-1]
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        suffix = f"/{self.service}/{self.db}" if self.topology is Topology.SENTINEL else ""
        return f"redis+{self.topology.value}://{hosts}{suffix}"


def _problem(url: str, reason: str) -> targets.ConfigError:
    shown = url.split("@")[-1] if "@" in url else url
    return targets.ConfigError("--store", [targets.Problem("--store", shown, reason)])


def parse_redis_url(url: str) -> RedisDeployment:
    """Parse a `--store` URL naming Redis; raise ConfigError naming `--store` for anything else."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return _parse_server(url)
    if scheme in ("redis+sentinel", "redis+cluster"):
        return _parse_multi_host(url, Topology.SENTINEL if scheme == "redis+sentinel" else Topology.CLUSTER)
    if scheme in ("sentinel", "redis-sentinel", "rediss+sentinel"):
        raise _problem(url, "use redis+sentinel://host:port[,host:port]/service[/db] for Sentinel")
    raise _problem(url, _USAGE)


def _parse_server(url: str) -> RedisDeployment:
    if "sentinel" in urllib.parse.urlsplit(url).query:
        raise _problem(url, "use redis+sentinel://host:port[,host:port]/service[/db] for Sentinel")
    try:
        kwargs: dict[str, Any] = dict(aioredis_connection.parse_url(url))
    except (ValueError, TypeError) as e:
        raise _problem(url, f"is not a Redis URL: {e}") from e
    connection_class = kwargs.pop("connection_class", aioredis_connection.Connection)
    try:
        connection_class(**kwargs)  # builds nothing on the network: it checks the query arguments
    except TypeError as e:
        unknown = str(e).rpartition("argument ")[2]
        raise _problem(url, f"has an unknown query argument {unknown}") from e
    return RedisDeployment(topology=Topology.SERVER, url=url)


def _parse_multi_host(url: str, topology: Topology) -> RedisDeployment:
    rest = url.partition("://")[2]
    rest, _, query = rest.partition("?")
    if query:
        raise _problem(url, "takes no query arguments")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    default_port = SENTINEL_DEFAULT_PORT if topology is Topology.SENTINEL else REDIS_DEFAULT_PORT
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port = _host_port(item.strip(), default_port)
        if not host:
            raise _problem(url, f"names an empty host in {hosts!r}")
        if port is None:
            raise _problem(url, f"has a bad port in {item!r}")
        nodes.append((host, port))
    parts = [urllib.parse.unquote(p) for p in path.split("/") if p]
    if topology is Topology.CLUSTER:
        if parts not in ([], ["0"]):
            raise _problem(url, "a Redis Cluster has database 0 only: give no path")
        return RedisDeployment(topology=topology, url=url, nodes=tuple(nodes), username=username, password=password)
    if not parts or len(parts) > 2:
        raise _problem(url, "needs the Sentinel service name as its path: /service[/db]")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _problem(url, f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    return RedisDeployment(
        topology=topology, url=url, nodes=tuple(nodes), service=parts[0], db=db, username=username, password=password
    )


def _host_port(item: str, default_port: int) -> tuple[str, int | None]:
    if item.startswith("["):  # [ipv6]:port
        host, _, tail = item[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon:
            host, port_text = item, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return host, None
    return host, int(port_text)


def fail_fast_retry() -> Retry:
    """Two quick retries (25 ms, then 50 ms): enough to ride over a reconnect, never a long wait."""
    return Retry(redis.backoff.ExponentialBackoff(cap=0.25, base=0.025), retries=2)


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    """The data client, and the Sentinel manager behind it (closed with it) and the watch that
    follows its master's switches, if any."""

    client: aioredis.Redis | aioredis_cluster.RedisCluster
    sentinel: aioredis_sentinel.Sentinel | None = None
    watch: sentinel_master.SentinelWatch | None = None


def connect(deployment: RedisDeployment, *, timeout: float) -> Connected:
    """Clients for `deployment` (nothing is opened until the first call): a plain client, a
    Sentinel-managed master client (with a watch that follows its switches; see sentinel_master),
    or a Cluster client."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": fail_fast_retry(),
    }
    if deployment.topology is Topology.SERVER:
        return Connected(aioredis.Redis.from_url(deployment.url, health_check_interval=10, **common))
    credentials: dict[str, Any] = {"username": deployment.username, "password": deployment.password}
    if deployment.topology is Topology.SENTINEL:
        assert deployment.service is not None
        sentinel = aioredis_sentinel.Sentinel(
            list(deployment.nodes),
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": fail_fast_retry(),
                "health_check_interval": 10,  # a subscription to a Sentinel gone silent is noticed
            },
            **common,
        )
        client: aioredis.Redis = sentinel.master_for(
            deployment.service,
            connection_pool_class=sentinel_master.FollowedMasterPool,
            connection_class=sentinel_master.RoleCheckedConnection,
            db=deployment.db,
            health_check_interval=10,
            **credentials,
        )
        pool = client.connection_pool
        assert isinstance(pool, sentinel_master.FollowedMasterPool)
        watch = sentinel_master.SentinelWatch(sentinel.sentinels, service=deployment.service, pool=pool)
        return Connected(client, sentinel, watch)
    cluster = aioredis_cluster.RedisCluster(
        startup_nodes=[aioredis_cluster.ClusterNode(host, port) for host, port in deployment.nodes],
        **common,
        **credentials,
    )
    return Connected(cluster)


def build_node_client(deployment: RedisDeployment, host: str, port: int, *, timeout: float | None) -> aioredis.Redis:
    """A plain client on one node of a Cluster (pub/sub: classic messages reach every node)."""
    return aioredis.Redis(
        host=host,
        port=port,
        username=deployment.username,
        password=deployment.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=fail_fast_retry(),
    )
