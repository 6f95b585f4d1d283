"""Processes the benchmarks start: redis-server and `prewarm serve` on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def keep_folder_off_path(folder: Path) -> None:
    """bench/scaler.py is named like the `scaler` package it measures: take bench/ off the import
    path (spawned processes inherit it and re-run the script, which does this again)."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != folder]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_redis(
    workdir: Path, *, port: int | None = None, persistent: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on `port` (a free one by default): throwaway, or with `persistent` an
    append-only file fsynced every second, as the manifests run it. Returns it and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = port or free_port()
    aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else ["--appendonly", "no"]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *aof, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    return process, f"redis://127.0.0.1:{port}/0"


def start_serve(
    config: Path,
    *,
    redis_url: str,
    http_port: int,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`prewarm serve` on the Redis store, with rate limits out of the way."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prewarm",
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(config),
            "--store",
            redis_url,
            "--http",
            f"127.0.0.1:{http_port}",
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )
    wait_port(http_port)
    return process


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop in reverse start order (the server before the store it uses)."""
    for process in reversed(processes):
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
