"""Semi-warm starts: compile caches shared by every pod of a model on a runtime, keyed by runtime.

`prewarm cache exec` computes a runtime key from what changes compiled artifacts (model, library
versions, CUDA runtime, GPU or CPU thread count, Python, an optional salt), points the compile
caches of PyTorch Inductor, Triton, vLLM and the CUDA driver at `<root>/<key>/`, and execs the
model server in its own process. The first pod fills the entry; later pods start semi-warm.

Each entry has a `manifest.json` (key inputs, bytes, created, last used, hits), always written
whole (temp file + rename, under an fcntl lock), and a `leases/` folder: one file per process
using the entry, refreshed by a small watcher process while that process lives. `gc` evicts the
least recently used entries that have no live lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LOCK = ".lock"
LEASES = "leases"
SNAPSHOTS = "snapshots"
LEASE_INTERVAL = 30.0  # seconds between lease refreshes
LEASE_TTL = 120.0  # a lease not refreshed for this long belongs to a dead process or node

# Where each library keeps what it compiled, relative to the entry (documented in docs/semi-warm.md).
CACHE_DIRECTORIES = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "VLLM_CACHE_ROOT": "vllm",
    "CUDA_CACHE_PATH": "cuda",
}
CACHE_SWITCHES = {
    "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",  # reuse compiled FX graphs across processes
    "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",  # reuse AOT-autograd results across processes
    "CUDA_CACHE_MAXSIZE": str(4 * 1024**3),  # the driver's JIT cache would evict at 256 MiB
}


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeFacts:
    """Everything that changes compiled artifacts; equal facts give the same key."""

    model: str
    python: str
    torch: str | None
    triton: str | None
    vllm: str | None
    cuda_runtime: str | None
    device: str  # GPU product name, or "cpu"
    compute_capability: str | None
    cpu_threads: int | None  # only for "cpu": Inductor's generated code depends on it
    salt: str = ""


def runtime_key(facts: RuntimeFacts) -> str:
    """`<model-slug>-<16 hex>`: readable, and a digest of every fact."""
    canonical = json.dumps(dataclasses.asdict(facts), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", facts.model.lower()).strip("-")[:48] or "model"
    return f"{slug}-{digest}"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_cuda_version() -> str | None:
    """torch.version.cuda, read from torch/version.py without importing torch (seconds faster)."""
    try:
        files = importlib.metadata.files("torch") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).replace("\\", "/") == "torch/version.py":
            match = re.search(r"^cuda\s*(?::\s*\S+)?\s*=\s*['\"]([^'\"]+)['\"]", file.read_text(), re.MULTILINE)
            return match.group(1) if match else None
    return None


def _gpu() -> tuple[str, str] | None:
    """(product name, compute capability) of GPU 0 from nvidia-smi, when there is one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    name, _, capability = out.partition(",")
    return (name.strip(), capability.strip()) if name.strip() else None


def cpu_threads(env: Mapping[str, str]) -> int:
    """The threads torch would use: OMP_NUM_THREADS when set, else the CPUs this process may run on."""
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def probe_runtime(*, model: str, salt: str, env: Mapping[str, str]) -> RuntimeFacts:
    """Read the facts of this process's runtime without importing torch."""
    gpu = _gpu()
    return RuntimeFacts(
        model=model,
        python=platform.python_version(),
        torch=_version("torch"),
        triton=_version("triton") or _version("pytorch-triton"),
        vllm=_version("vllm"),
        cuda_runtime=_torch_cuda_version() if gpu is not None else None,
        device=gpu[0] if gpu else "cpu",
        compute_capability=gpu[1] if gpu else None,
        cpu_threads=None if gpu else cpu_threads(env),
        salt=salt,
    )


def cache_environment(entry: Path) -> dict[str, str]:
    """The variables that point every compile cache at `entry`."""
    env = {name: str(entry / sub) for name, sub in CACHE_DIRECTORIES.items()}
    env.update(CACHE_SWITCHES)
    env["PREWARM_CACHE_ENTRY"] = str(entry)
    return env


def inductor_header_dir(env: Mapping[str, str]) -> Path:
    """Where Inductor puts precompiled headers: under its *default* cache dir in the temp folder
    (torch/_inductor/codecache.py `_HEADER_DIR`), whatever TORCHINDUCTOR_CACHE_DIR says."""
    temp = next((env[k] for k in ("TMPDIR", "TEMP", "TMP") if env.get(k)), None) or tempfile.gettempdir()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    return Path(temp) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)) / "precompiled_headers"


def link_header_dir(entry: Path, env: Mapping[str, str]) -> Path | None:
    """Point Inductor's precompiled-header folder at the entry, so pods share those too (a pod's
    /tmp starts empty). A real folder already there is left alone. Returns the link, if made."""
    link = inductor_header_dir(env)
    target = entry / "inductor-headers"
    target.mkdir(exist_ok=True)
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return link
        link.unlink()
    elif link.exists():
        return None
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def per_pod_vllm_variables(env: Mapping[str, str]) -> list[str]:
    """VLLM_* variables whose values name this pod: vLLM hashes them into its cache key."""
    identities = {v for k in ("HOSTNAME", "POD_NAME", "POD_IP", "NODE_NAME") if (v := env.get(k, "").strip())}
    identities.add(socket.gethostname())
    return sorted(
        name
        for name, value in env.items()
        if name.startswith("VLLM_") and any(identity and identity in value for identity in identities)
    )


# --- the entry: manifest, lock, leases ---


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold the entry's exclusive fcntl lock (works across processes, and on shared volumes that
    support POSIX locks)."""
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def open_entry(root: Path, facts: RuntimeFacts, *, now: float) -> tuple[Path, bool]:
    """Create or reuse the entry for `facts`; count a hit (it has content) or a miss. Returns
    (entry, hit)."""
    key = runtime_key(facts)
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
        for sub in (*CACHE_DIRECTORIES.values(), "inductor-headers", SNAPSHOTS, LEASES):
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
    with locked(entry):
        manifest = read_manifest(entry) or {}
        manifest["bytes"] = entry_bytes(entry)
        manifest["last_used"] = now
        write_manifest(entry, manifest)


def watch_process(entry: Path, *, host: str, pid: int, interval: float = LEASE_INTERVAL) -> None:
    """Refresh (host, pid)'s lease while that process lives, then release it. Runs in its own
    process, so it outlives the exec."""
    while _alive(pid):
        write_lease(entry, host=host, pid=pid, now=time.time())
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(min(1.0, interval))
    release(entry, host=host, pid=pid, now=time.time())


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
    """Entries with a readable manifest."""
    entries = []
    if root.is_dir():
        for entry in sorted(p for p in root.iterdir() if p.is_dir()):
            manifest = read_manifest(entry)
            if manifest is not None:
                entries.append((entry, manifest))
    return entries


def collect_garbage(root: Path, *, max_bytes: int, now: float, ttl: float = LEASE_TTL) -> list[str]:
    """Evict least recently used entries without a live lease until the root holds <= max_bytes.
    Returns the evicted keys."""
    entries = [(entry, manifest, entry_bytes(entry)) for entry, manifest in list_entries(root)]
    total = sum(size for _, _, size in entries)
    evicted = []
    for entry, _, size in sorted(entries, key=lambda item: float(item[1].get("last_used", 0))):
        if total <= max_bytes:
            break
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


# --- pod phases (observability; never in the way of the start) ---


def report_phase(phase: str, *, env: Mapping[str, str], at: float, detail: Mapping[str, str] | None = None) -> None:
    """POST a dev.prewarm.pod.phase event when PREWARM_EVENTS_URL and PREWARM_TARGET are set.

    Waits at most a second and only reports failures on stderr: a pod start never waits on it.
    """
    url, target = env.get("PREWARM_EVENTS_URL"), env.get("PREWARM_TARGET")
    if not url or not target:
        return
    import urllib.error
    import urllib.request
    from datetime import UTC, datetime

    pod = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    event = {
        "specversion": "1.0",
        "type": "dev.prewarm.pod.phase",
        "source": "prewarm-cache-exec",
        "id": f"{pod}-{os.getpid()}-{phase}-{at:.6f}",
        "time": datetime.fromtimestamp(at, UTC).isoformat(),
        "data": {"target": target, "pod": pod, "phase": phase, **(detail or {})},
    }
    headers = {"Content-Type": "application/cloudevents+json"}
    if env.get("PREWARM_TOKEN"):
        headers["Authorization"] = f"Bearer {env['PREWARM_TOKEN']}"
    request = urllib.request.Request(url, data=json.dumps(event).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"prewarm cache: could not report {phase} to {url}: {e}", file=sys.stderr)


# --- exec ---


def exec_with_cache(command: Sequence[str], *, root: Path, model: str, salt: str, env: Mapping[str, str]) -> None:
    """Point the caches at this runtime's entry, start the lease watcher, and exec `command` in
    this process (same PID, so signals reach the model server directly). Does not return."""
    if not command:
        raise ValueError("no command to run after --")
    report_phase("container_started", env=env, at=time.time())
    facts = probe_runtime(model=model, salt=salt, env=env)
    entry, hit = open_entry(root, facts, now=time.time())
    report_phase("cache_restored", env=env, at=time.time(), detail={"cache": "hit" if hit else "miss"})
    for name in per_pod_vllm_variables(env):
        print(
            f"prewarm cache: {name} holds a per-pod value; vLLM hashes it into its cache key, "
            "so pods will not share compiled artifacts",
            file=sys.stderr,
        )
    if link_header_dir(entry, env) is None:
        print(
            f"prewarm cache: {inductor_header_dir(env)} exists; Inductor's precompiled headers stay per pod",
            file=sys.stderr,
        )
    print(f"prewarm cache: {'hit' if hit else 'miss'} {entry}", file=sys.stderr)
    pid = os.getpid()
    host = socket.gethostname()
    write_lease(entry, host=host, pid=pid, now=time.time())
    if os.fork() == 0:  # the watcher: detached, so it outlives neither more nor less than it must
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            try:
                watch_process(entry, host=host, pid=pid)
            finally:
                os._exit(0)
        os._exit(0)
    os.wait()  # reap the intermediate child; the watcher is re-parented
    os.execvpe(command[0], list(command), {**env, **cache_environment(entry)})
