"""Copy one large file with parallel ranged reads and writes (os.preadv/os.pwrite in threads, which
release the GIL), hashing it with sha256 in order on the way, so a file is read once.

Chunks are read into a fixed set of reused buffers: allocating a fresh 8 MiB object per chunk
costs page faults that halved the throughput on a 2-vCPU machine (bench/weights.py).
"""

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
        workers = max(1, threads)
        free = collections.deque(bytearray(min(chunk, max(size, 1))) for _ in range(2 * workers))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            pending: collections.deque[concurrent.futures.Future[memoryview]] = collections.deque()
            for offset in range(0, size, chunk):
                if not free:  # hash the oldest chunk in order, then reuse its buffer
                    done = pending.popleft().result()
                    digest.update(done)
                    free.append(done.obj)  # type: ignore[arg-type]
                view = memoryview(free.popleft())[: min(chunk, size - offset)]
                pending.append(pool.submit(_copy_range, src, destination, offset, view))
            while pending:
                digest.update(pending.popleft().result())
        os.fsync(destination)
    finally:
        os.close(src)
    return digest.hexdigest()


def _copy_range(src: int, dst: int, offset: int, view: memoryview) -> memoryview:
    length = len(view)
    read = 0
    while read < length:
        got = os.preadv(src, [view[read:]], offset + read)
        if got == 0:
            raise OSError(f"short read: {read} of {length} bytes at offset {offset}")
        read += got
    written = 0
    while written < length:
        written += os.pwrite(dst, view[written:], offset + written)
    return view


def hash_file(path: Path, *, chunk: int = CHUNK) -> str:
    """sha256 (hex) of a file's content."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()
