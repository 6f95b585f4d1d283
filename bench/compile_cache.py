"""Compile-cache benchmark: first compiled call of a small decoder stack, cold vs semi-warm.

Every run is a fresh process started through `prewarm cache exec`, timing torch.compile's first
call (the compile) and the time to first compiled output including interpreter start and imports:

- cold: an empty cache root;
- warm: another process filled the entry first, and the root was then moved to a different mount
  path (relocation), as when another pod on another node mounts the volume elsewhere;
- salt: the warm root, but a different `--salt`: must miss (a new entry) and cost a cold compile;
- threads: the warm root, but a different OMP_NUM_THREADS: must miss too.

    pip install torch==2.13.0   # the `torch` extra; a CPU build here
    python bench/compile_cache.py [--runs 3]

Prints a table and writes JSON (bench/out/compile_cache.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LAYERS, D_MODEL, HEADS, SEQUENCE = 4, 512, 8, 128


def worker() -> None:
    """Runs under `prewarm cache exec`: build, compile, call once, report timings as JSON."""
    started = float(os.environ["PREWARM_BENCH_T0"])
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(D_MODEL)
            self.attention = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
            self.norm2 = nn.LayerNorm(D_MODEL)
            self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h = self.norm1(x)
            x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(32_000, D_MODEL)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.head = nn.Linear(D_MODEL, 32_000)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            mask = torch.triu(torch.full((tokens.shape[1], tokens.shape[1]), float("-inf")), diagonal=1)
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(x)

    model = Decoder().eval()
    tokens = torch.randint(0, 32_000, (1, SEQUENCE))
    compiled = torch.compile(model)
    with torch.inference_mode():
        call = time.time()
        out = compiled(tokens)
        done = time.time()
    print(json.dumps({"first_call_s": done - call, "to_first_output_s": done - started, "shape": list(out.shape)}))


def run(root: Path, *, salt: str = "", threads: int | None = None) -> dict[str, Any]:
    env = {**os.environ, "PREWARM_BENCH_T0": repr(time.time()), "PREWARM_MODEL": "bench/decoder"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "prewarm.cli", "cache", "exec", "--root", str(root)]
    if salt:
        command += ["--salt", salt]
    command += ["--", sys.executable, str(Path(__file__).resolve()), "--worker"]
    env["PREWARM_BENCH_T0"] = repr(time.time())
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=900)
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    verdict = next(line for line in result.stderr.splitlines() if line.startswith("prewarm cache: "))
    timings["cache"] = verdict.split()[2]  # hit | miss
    timings["entry"] = verdict.split()[3].rsplit("/", 1)[-1]
    return timings


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first = [r["first_call_s"] for r in rows]
    total = [r["to_first_output_s"] for r in rows]
    return {
        "runs": len(rows),
        "first_call_median_s": statistics.median(first),
        "first_call_min_s": min(first),
        "first_call_max_s": max(first),
        "to_first_output_median_s": statistics.median(total),
        "to_first_output_min_s": min(total),
        "to_first_output_max_s": max(total),
        "cache": sorted({r["cache"] for r in rows}),
        "entries": sorted({r["entry"] for r in rows}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/out/compile_cache.json"))
    args = parser.parse_args()
    if args.worker:
        worker()
        return 0
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install torch==2.13.0", file=sys.stderr)
        return 1

    base = Path(tempfile.mkdtemp(prefix="prewarm-compile-"))
    threads = torch.get_num_threads()
    try:
        cold = [run(base / f"cold-{i}") for i in range(args.runs)]
        run(base / "mount-a")  # another process fills the cache...
        os.replace(base / "mount-a", base / "mount-b")  # ...and the volume is mounted elsewhere
        warm = [run(base / "mount-b") for _ in range(args.runs)]
        salted = [run(base / "mount-b", salt=f"other-{i}") for i in range(args.runs)]
        # one run: a second with the same thread count would rightly hit the entry the first made
        other_threads = [run(base / "mount-b", threads=max(1, threads - 1))]
    finally:
        shutil.rmtree(base, ignore_errors=True)

    result = {
        "benchmark": "compile_cache",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "torch": torch.__version__,
        "model": {"layers": LAYERS, "d_model": D_MODEL, "heads": HEADS, "input": [1, SEQUENCE]},
        "cold": summarize(cold),
        "warm_relocated": summarize(warm),
        "different_salt": summarize(salted),
        "different_threads": summarize(other_threads),
        "raw": {"cold": cold, "warm": warm, "salt": salted, "threads": other_threads},
    }
    result["warm_over_cold_first_call"] = (
        result["warm_relocated"]["first_call_median_s"] / result["cold"]["first_call_median_s"]
    )
    result["false_hits"] = sum(r["cache"] == "hit" for r in salted + other_threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"torch {torch.__version__}, {LAYERS} layers, d_model {D_MODEL}, input 1x{SEQUENCE}, {threads} threads")
    print(f"{'scenario':<22}{'runs':>5}{'cache':>7}{'first call s (min-max)':>26}{'to output s (min-max)':>26}")
    for name in ("cold", "warm_relocated", "different_salt", "different_threads"):
        row = result[name]
        print(
            f"{name:<22}{row['runs']:>5}{'/'.join(row['cache']):>7}"
            f"{row['first_call_median_s']:>10.2f} ({row['first_call_min_s']:.2f}-{row['first_call_max_s']:.2f})"
            f"{row['to_first_output_median_s']:>12.2f} ({row['to_first_output_min_s']:.2f}-"
            f"{row['to_first_output_max_s']:.2f})"
        )
    print(f"warm/cold first call: {result['warm_over_cold_first_call']:.1%}; false hits: {result['false_hits']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
