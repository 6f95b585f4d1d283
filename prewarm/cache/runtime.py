"""The runtime key: what changes compiled artifacts (model, library versions, CUDA runtime, GPU or
CPU thread count, Python, an optional salt), and where each library's compile cache goes inside
the entry that key names.
"""

from __future__ import annotations

import dataclasses
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
import tempfile
from collections.abc import Mapping
from pathlib import Path

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
