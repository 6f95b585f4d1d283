"""Copy one large file in parallel ranges and hash it with sha256 in order on the way.

Worker threads copy 8 MiB ranges with `os.copy_file_range` (the kernel copies, as `cp` does; no
trip through Python's memory), falling back to `os.preadv`/`os.pwrite` into a reused buffer where
the two files' filesystems do not support it. The hasher reads each copied range back from the
destination (in the page cache, where the copy has just put it), so the sha256 is of the bytes
staged, not of a second read of a source that may have changed since, into one reused buffer: a
fresh object per range
costs page faults that halved the throughput on a 2-vCPU machine (bench/weights.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

CHUNK = 8 * 1024**2  # bytes per range
THREADS = 4  # ranges in flight per file: enough to keep NVMe and network stores busy
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def copy_and_hash(source: Path, destination: int, *, size: int, threads: int = THREADS, chunk: int = CHUNK) -> str:
    """Copy `size` bytes of `source` into the file `destination` (open for reading and writing)
    at the same offsets and return the sha256 (hex) of what was written, read back from it. The
    destination is fsynced before this returns.

    Raises OSError on a read or write failure, and when the source is shorter than `size`.
    """
    digest = hashlib.sha256()
    src = os.open(source, os.O_RDONLY)
    try:
        if size:
            os.posix_fadvise(src, 0, size, os.POSIX_FADV_SEQUENTIAL)
        os.ftruncate(destination, size)
        copier = _RangeCopier(src, destination, chunk=min(chunk, max(size, 1)))
        buffer = bytearray(min(chunk, max(size, 1)))
        view = memoryview(buffer)
        workers = max(1, threads)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            pending: collections.deque[tuple[int, int, concurrent.futures.Future[None]]] = collections.deque()

            def hash_oldest() -> None:
                offset, length, copied = pending.popleft()
                copied.result()
                digest.update(view[: _read_exactly(destination, view[:length], offset)])

            for offset in range(0, size, chunk):
                length = min(chunk, size - offset)
                pending.append((offset, length, pool.submit(copier.copy, offset, length)))
                while len(pending) >= 2 * workers:
                    hash_oldest()
            while pending:
                hash_oldest()
        os.fsync(destination)
    finally:
        os.close(src)
    return digest.hexdigest()


def fetch_and_hash(
    fetch: Callable[[int, int], bytes], destination: int, *, size: int, threads: int = THREADS, chunk: int = CHUNK
) -> str:
    """Write `size` bytes that `fetch(offset, length)` returns (ranged GETs, in threads) into the
    open file `destination` (opened for reading too) and return their sha256 (hex), read back in
    order from the page cache. The destination is fsynced before this returns."""
    digest = hashlib.sha256()
    os.ftruncate(destination, size)
    buffer = bytearray(min(chunk, max(size, 1)))
    view = memoryview(buffer)

    def fetch_range(offset: int, length: int) -> None:
        data = memoryview(fetch(offset, length))
        written = 0
        while written < length:
            written += os.pwrite(destination, data[written:], offset + written)

    workers = max(1, threads)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[tuple[int, int, concurrent.futures.Future[None]]] = collections.deque()

        def hash_oldest() -> None:
            offset, length, fetched = pending.popleft()
            fetched.result()
            digest.update(view[: _read_exactly(destination, view[:length], offset)])

        for offset in range(0, size, chunk):
            length = min(chunk, size - offset)
            pending.append((offset, length, pool.submit(fetch_range, offset, length)))
            while len(pending) >= 2 * workers:
                hash_oldest()
        while pending:
            hash_oldest()
    os.fsync(destination)
    return digest.hexdigest()


class _RangeCopier:
    """Copies ranges between two open files: copy_file_range while it works, then read and write."""

    def __init__(self, src: int, dst: int, *, chunk: int) -> None:
        self._src, self._dst, self._chunk = src, dst, chunk
        self._in_kernel = True
        self._buffers = threading.local()

    def copy(self, offset: int, length: int) -> None:
        if self._in_kernel:
            try:
                self._copy_in_kernel(offset, length)
                return
            except OSError as e:
                if e.errno not in _NO_COPY_FILE_RANGE:
                    raise
                self._in_kernel = False
        buffer = getattr(self._buffers, "view", None)
        if buffer is None:
            buffer = self._buffers.view = memoryview(bytearray(self._chunk))
        view = buffer[:length]
        _read_exactly(self._src, view, offset)
        written = 0
        while written < length:
            written += os.pwrite(self._dst, view[written:], offset + written)

    def _copy_in_kernel(self, offset: int, length: int) -> None:
        done = 0
        while done < length:
            copied = os.copy_file_range(self._src, self._dst, length - done, offset + done, offset + done)
            if copied == 0:
                raise OSError(f"short read: {done} of {length} bytes at offset {offset}")
            done += copied


def _read_exactly(fd: int, view: memoryview, offset: int) -> int:
    length = len(view)
    read = 0
    while read < length:
        got = os.preadv(fd, [view[read:]], offset + read)
        if got == 0:
            raise OSError(f"short read: {read} of {length} bytes at offset {offset}")
        read += got
    return length


def hash_file(path: Path, *, chunk: int = CHUNK) -> str:
    """sha256 (hex) of a file's content."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()
