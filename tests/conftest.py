"""Shared fixtures for the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import Chromium, PrometheusServer, RedisCluster, RedisServer, SentinelGroup


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A Sentinel-managed master with one replica (redis-server and redis-sentinel processes)."""
    group = SentinelGroup(tmp_path / "sentinel")
    group.directory.mkdir()
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster."""
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_with_replicas(tmp_path: Path) -> Iterator[RedisCluster]:
    """A real Redis Cluster of three masters with a replica each; a master is failed after 1 s."""
    cluster = RedisCluster(tmp_path / "cluster", replicas=1, node_timeout_ms=1000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus not started yet: load its history (`load_openmetrics`), then `start()` it."""
    server = PrometheusServer(tmp_path / "prometheus")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    """Headless Chromium with an empty profile, driven over the DevTools protocol."""
    chromium = Chromium(tmp_path / "profile")
    await chromium.start()
    try:
        yield chromium
    finally:
        await chromium.stop()
