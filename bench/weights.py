"""Weights-tier benchmark: a generated ~2 GB safetensors model (4 shards), loaded with `safetensors`
into CPU arrays

- from the source folder with its pages dropped from the page cache (posix_fadvise DONTNEED):
  a pod reading a model store on a cold node;
- from the staged tier, cold (its blobs dropped too): the node's volume after `prewarm cache stage`;
- from the staged tier after the follower's read-ahead (`page_cache.read_ahead`): the pod the
  follower staged ahead of;

and `prewarm cache stage`'s throughput against `cp` of the same files in the same run (alternating
rounds, source pages dropped before each; `cp` followed by an fsync of what it wrote, as staging
fsyncs every blob, and plain `cp` beside it).

    python bench/weights.py [--size-gb 2] [--rounds 2] [--workdir /var/tmp]

Prints a table and writes JSON (bench/out/weights.json). Writes about 3 x size on disk, removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from prewarm.cache import page_cache, staging

SHARDS = 4
MODEL = "bench/weights-2g"


def write_model(folder: Path, *, total_bytes: int, seed: int = 0) -> None:
    """A model of SHARDS float16 shards of random bytes, with its index and config."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    per_shard = total_bytes // SHARDS
    per_tensor = min(64 * 1024**2, per_shard // 4)
    weight_map: dict[str, str] = {}
    layer = 0
    for shard in range(1, SHARDS + 1):
        name = f"model-{shard:05d}-of-{SHARDS:05d}.safetensors"
        tensors = {}
        for _ in range(per_shard // per_tensor):
            tensors[f"model.layers.{layer:03d}.weight"] = np.frombuffer(rng.bytes(per_tensor), dtype=np.float16)
            layer += 1
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bench"}))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def load_seconds(folder: Path) -> float:
    """Load every shard into CPU arrays; seconds."""
    started = time.perf_counter()
    total = 0
    for shard in shards(folder):
        total += sum(array.nbytes for array in load_file(str(shard)).values())
    elapsed = time.perf_counter() - started
    assert total > 0
    return elapsed


def drop_folder(folder: Path) -> None:
    page_cache.drop(p.resolve() for p in folder.rglob("*") if p.is_file())


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cp_then_fsync(source: Path, destination: Path, *, fsync: bool) -> None:
    subprocess.run(["cp", "-r", str(source), str(destination)], check=True)
    if fsync:
        for path in destination.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "weights.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prewarm-weights-", dir=args.workdir))
    try:
        source = work / "store" / "bench" / "weights-2g"
        write_model(source, total_bytes=int(args.size_gb * 1024**3))
        size = sum(p.stat().st_size for p in source.iterdir())
        copies: dict[str, list[float]] = {"stage": [], "cp + fsync": [], "cp": []}
        kept: Path | None = None
        for round_ in range(args.rounds):
            order = ["stage", "cp + fsync", "cp"] if round_ % 2 == 0 else ["cp", "cp + fsync", "stage"]
            for name in order:
                root = work / f"copy-{round_}-{name.replace(' + ', '-')}"
                drop_folder(source)
                if name == "stage":
                    seconds = timed(
                        lambda root=root: staging.stage_weights(root, model=MODEL, revision="main", source=source)
                    )
                else:
                    seconds = timed(lambda root=root, name=name: cp_then_fsync(source, root, fsync="fsync" in name))
                copies[name].append(seconds)
                if name == "stage" and kept is None:
                    kept = root  # the staged tier the loads below read
                else:
                    drop_folder(root)
                    shutil.rmtree(root)
        assert kept is not None
        result = staging.stage_weights(kept, model=MODEL, revision="main", source=source)
        assert result.hit
        loads: dict[str, float] = {}
        drop_folder(source)
        loads["source, page cache dropped"] = load_seconds(source)
        drop_folder(result.snapshot)
        loads["staged tier, cold"] = load_seconds(result.snapshot)
        drop_folder(result.snapshot)
        read_ahead = timed(lambda: page_cache.read_ahead(page_cache.snapshot_files(result.snapshot)))
        loads["staged tier, after read-ahead"] = load_seconds(result.snapshot)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {name: size / 1e6 / statistics.median(times) for name, times in copies.items() if times}
    rows = [
        {"what": f"load: {name}", "seconds": round(seconds, 3), "mb_per_s": round(size / 1e6 / seconds, 1)}
        for name, seconds in loads.items()
    ]
    rows.append(
        {"what": "follower read-ahead", "seconds": round(read_ahead, 3), "mb_per_s": round(size / 1e6 / read_ahead, 1)}
    )
    rows += [
        {
            "what": f"copy: {name} (median of {len(copies[name])})",
            "seconds": round(size / 1e6 / rate, 3),
            "mb_per_s": round(rate, 1),
        }
        for name, rate in rates.items()
    ]
    ratios = {
        "stage / cp+fsync": rates["stage"] / rates["cp + fsync"],
        "stage / cp": rates["stage"] / rates["cp"],
        "staged cold load / source load": loads["staged tier, cold"] / loads["source, page cache dropped"],
        "read-ahead load / source load": loads["staged tier, after read-ahead"] / loads["source, page cache dropped"],
    }
    print(f"model: {size / 1e9:.2f} GB in {SHARDS} shards; {platform.machine()}, {os.cpu_count()} CPUs")
    print("| what | seconds | MB/s |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['what']} | {row['seconds']:.3f} | {row['mb_per_s']:.0f} |")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "bytes": size,
                "rows": rows,
                "copies_seconds": copies,
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
