"""Put a snapshot's files in the page cache before a model server opens them (the follower's
read-ahead), or take them out of it (to measure a cold load)."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterable
from pathlib import Path

CHUNK = 8 * 1024**2
THREADS = 4


def snapshot_files(snapshot: Path) -> list[Path]:
    """The blobs a snapshot's links point at, in name order."""
    return sorted({p.resolve() for p in snapshot.rglob("*") if p.is_file()})


def read_ahead(paths: Iterable[Path], *, threads: int = THREADS, chunk: int = CHUNK) -> int:
    """Read every byte of `paths` once, in parallel ranges, so they sit in the page cache; the
    bytes read. A page cache smaller than the files keeps only their ends."""
    jobs = []
    for path in paths:
        size = path.stat().st_size
        jobs += [(path, offset, min(chunk, size - offset)) for offset in range(0, size, chunk)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return sum(pool.map(lambda job: _read_range(*job), jobs))


def _read_range(path: Path, offset: int, length: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        done = 0
        while done < length:
            block = os.pread(fd, min(length - done, CHUNK), offset + done)
            if not block:
                break
            done += len(block)
        return done
    finally:
        os.close(fd)


def drop(paths: Iterable[Path]) -> None:
    """Ask the kernel to drop the files' clean pages (posix_fadvise DONTNEED), flushing them first."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
