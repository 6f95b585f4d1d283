"""Entries on the shared cache volume: one folder per runtime key with a `manifest.json` (key
inputs, bytes, created, last used, hits), always written whole (temp file + rename, under an fcntl
lock), and a `leases/` folder with one file per process using the entry, refreshed by a watcher
process while that process lives. `gc` evicts the least recently used entries with no live lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prewarm.cache import hub_layout, runtime

MANIFEST = "manifest.json"
LOCK = ".lock"
LEASES = "leases"
SNAPSHOTS = "snapshots"
LEASE_INTERVAL = 30.0  # seconds between lease refreshes
LEASE_TTL = 120.0  # a lease not refreshed for this long belongs to a dead process or node


@contextlib.contextmanager
def locked(entry: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the entry's exclusive fcntl lock (works across processes, and on shared volumes that
    support POSIX locks). Locks the entry at `entry` after any wait, not one gc moved away meanwhile.
    `on_wait` is called once before waiting, when another process holds it (a stager, for minutes)."""
    while True:
        entry.mkdir(parents=True, exist_ok=True)
        with open(entry / LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(entry / LOCK)
            except FileNotFoundError:
                current = None
            held = os.fstat(handle.fileno())
            if current is None or (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
                continue  # gc moved the entry away while we waited: lock the one at this path now
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


def read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # never half-written (rename is atomic), but a stray file must not break a start
    return data if isinstance(data, dict) else None


def write_manifest(entry: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically: readers see the old or the new file, never a mix."""
    fd, temp = tempfile.mkstemp(prefix=".manifest-", dir=entry)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, entry / MANIFEST)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def entry_bytes(entry: Path) -> int:
    """Bytes of everything cached in the entry (manifest, lock and leases not counted)."""
    total = 0
    for path in entry.rglob("*"):
        counted = path.name not in (MANIFEST, LOCK) and LEASES not in path.relative_to(entry).parts
        if counted and path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
    return total


def open_entry(root: Path, facts: runtime.RuntimeFacts, *, now: float) -> tuple[Path, bool]:
    """Create or reuse the entry for `facts`; count a hit (it has content) or a miss. Returns
    (entry, hit)."""
    key = runtime.runtime_key(facts)
    entry = root / key
    with locked(entry):
        manifest = read_manifest(entry)
        if manifest is None:
            manifest = {
                "key": key,
                "inputs": dataclasses.asdict(facts),
                "bytes": 0,
                "created": now,
                "last_used": now,
                "hits": 0,
                "misses": 0,
            }
        hit = manifest.get("bytes", 0) > 0 or entry_bytes(entry) > 0
        manifest["hits" if hit else "misses"] = int(manifest.get("hits" if hit else "misses", 0)) + 1
        manifest["last_used"] = now
        for sub in (*runtime.CACHE_DIRECTORIES.values(), "inductor-headers", SNAPSHOTS, LEASES):
            (entry / sub).mkdir(exist_ok=True)
        write_manifest(entry, manifest)
    return entry, hit


def lease_path(entry: Path, host: str, pid: int) -> Path:
    return entry / LEASES / f"{host}-{pid}.json"


def write_lease(entry: Path, *, host: str, pid: int, now: float) -> Path:
    """Mark the entry in use by (host, pid) as of `now`."""
    path = lease_path(entry, host, pid)
    fd, temp = tempfile.mkstemp(prefix=".lease-", dir=entry / LEASES)
    with os.fdopen(fd, "w") as handle:
        json.dump({"host": host, "pid": pid, "heartbeat": now}, handle)
    os.replace(temp, path)
    return path


def live_leases(entry: Path, *, now: float, ttl: float = LEASE_TTL) -> list[dict[str, Any]]:
    """Leases refreshed within `ttl` seconds."""
    leases = []
    for path in (entry / LEASES).glob("*.json"):
        try:
            lease = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(lease, dict) and now - float(lease.get("heartbeat", 0)) < ttl:
            leases.append(lease)
    return leases


def release(entry: Path, *, host: str, pid: int, now: float) -> None:
    """Drop (host, pid)'s lease and record what the entry holds now."""
    with contextlib.suppress(FileNotFoundError):
        lease_path(entry, host, pid).unlink()
    if read_manifest(entry) is None:
        return  # evicted (our lease had run out): `locked` would bring back an empty folder
    with locked(entry):
        manifest = read_manifest(entry)
        if manifest is None:
            return  # evicted while we waited for the lock
        manifest["bytes"] = entry_bytes(entry)
        manifest["last_used"] = now
        write_manifest(entry, manifest)


def watch_process(
    entry: Path, *, host: str, pid: int, interval: float = LEASE_INTERVAL, also: Sequence[Path] = ()
) -> None:
    """Refresh (host, pid)'s lease on `entry` (and on the entries in `also`, such as the model's
    weights) while that process lives, then release them. Runs in its own process, so it outlives
    the exec."""
    while _alive(pid):
        for leased in (entry, *also):
            write_lease(leased, host=host, pid=pid, now=time.time())
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(min(1.0, interval))
    for leased in (entry, *also):
        release(leased, host=host, pid=pid, now=time.time())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    with contextlib.suppress(OSError):
        if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return False
    return True


# --- gc and stats ---


def list_entries(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Entries with a readable manifest: compile caches, then the weights tier's model folders."""
    entries = []
    for folder in (root, hub_layout.weights_root(root)):
        if folder.is_dir():
            for entry in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                manifest = read_manifest(entry)
                if manifest is not None:
                    entries.append((entry, manifest))
    return entries


def collect_garbage(root: Path, *, max_bytes: int, now: float, ttl: float = LEASE_TTL) -> list[str]:
    """Evict least recently used entries (compile caches and weights alike) without a live lease
    until the root holds <= max_bytes. Returns the evicted keys."""
    return _evict(list_entries(root), max_bytes=max_bytes, now=now, ttl=ttl)


def collect_weights(
    root: Path,
    *,
    max_bytes: int,
    now: float,
    keep: Sequence[Path] = (),
    needed: Sequence[Path] = (),
    ttl: float = LEASE_TTL,
) -> list[str]:
    """Evict the weights tier's models without a live lease (never those in `keep`) until the tier
    holds <= max_bytes: a node's budget for weights. Models no longer needed go first, least recently
    used first; those in `needed` only after them. Returns their folders."""
    weights = hub_layout.weights_root(root)
    return _evict(
        [(entry, manifest) for entry, manifest in list_entries(root) if entry.parent == weights],
        max_bytes=max_bytes,
        now=now,
        ttl=ttl,
        keep=keep,
        last=needed,
    )


def _evict(
    candidates: Sequence[tuple[Path, dict[str, Any]]],
    *,
    max_bytes: int,
    now: float,
    ttl: float,
    keep: Sequence[Path] = (),
    last: Sequence[Path] = (),
) -> list[str]:
    entries = [(entry, manifest, entry_bytes(entry)) for entry, manifest in candidates]
    total = sum(size for _, _, size in entries)
    evicted = []
    for entry, _, size in sorted(entries, key=lambda item: (item[0] in last, float(item[1].get("last_used", 0)))):
        if total <= max_bytes:
            break
        if entry in keep:
            continue
        with locked(entry):
            if live_leases(entry, now=now, ttl=ttl):
                continue
            staging = entry.with_name(f".evicting-{entry.name}-{os.getpid()}")
            os.replace(entry, staging)  # out of sight at once; a racing `exec` starts a fresh entry
        shutil.rmtree(staging, ignore_errors=True)
        total -= size
        evicted.append(entry.name)
    return evicted


def cache_stats(root: Path, *, now: float) -> dict[str, Any]:
    """Entries, bytes, hits, misses and entries in use, for `prewarm cache stats`."""
    entries = list_entries(root)
    return {
        "root": str(root),
        "entries": len(entries),
        "bytes": sum(entry_bytes(entry) for entry, _ in entries),
        "hits": sum(int(m.get("hits", 0)) for _, m in entries),
        "misses": sum(int(m.get("misses", 0)) for _, m in entries),
        "in_use": sum(1 for entry, _ in entries if live_leases(entry, now=now)),
        "keys": [m.get("key", entry.name) for entry, m in entries],
    }
