"""Shared fixtures for the test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import Chromium, PrometheusServer, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
