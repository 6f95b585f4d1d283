"""Copy one large file with parallel ranged reads and writes (os.pread/os.pwrite in threads, which
release the GIL), hashing it with sha256 in order on the way, so a file is read once."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
from pathlib import Path

CHUNK = 8 * 1024**2  # bytes per ranged read
THREADS = 4  # ranged reads in flight per file: enough to keep NVMe and network stores busy


def copy_and_hash(source: Path, destination: int, *, size: int, threads: int = THREADS, chunk: int = CHUNK) -> str:
    """Copy `size` bytes of `source` into the open file `destination` at the same offsets and
    return their sha256 (hex). The destination is fsynced before this returns.

    Raises OSError on a read or write failure, and when the source is shorter than `size`.
    """
    digest = hashlib.sha256()
    src = os.open(source, os.O_RDONLY)
    try:
        if size:
            os.posix_fadvise(src, 0, size, os.POSIX_FADV_SEQUENTIAL)
        os.ftruncate(destination, size)
        offsets = iter(range(0, size, chunk))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            pending: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
            for offset in offsets:  # keep 2x threads chunks in flight, hash them in order
                pending.append(pool.submit(_copy_range, src, destination, offset, min(chunk, size - offset)))
                while len(pending) >= 2 * threads:
                    digest.update(pending.popleft().result())
            while pending:
                digest.update(pending.popleft().result())
        os.fsync(destination)
    finally:
        os.close(src)
    return digest.hexdigest()


def _copy_range(src: int, dst: int, offset: int, length: int) -> bytes:
    data = os.pread(src, length, offset)
    if len(data) != length:
        raise OSError(f"short read: {len(data)} of {length} bytes at offset {offset}")
    view = memoryview(data)
    written = 0
    while written < length:
        written += os.pwrite(dst, view[written:], offset + written)
    return data


def hash_file(path: Path, *, chunk: int = CHUNK) -> str:
    """sha256 (hex) of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
