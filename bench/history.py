"""History benchmark: start-up load of 100 targets x 14 days at one minute from a local Prometheus,
and the queries of a per-minute refresh.

In one run: a synthetic request history (every target's counter sampled every minute for 14 days,
as a scraped counter is; Poisson counts with a daily cycle; four namespaces of 25 targets, knative
preset) backfilled with `promtool tsdb create-blocks-from openmetrics` into a Prometheus on a free
loopback port. Then, each in its own process so peak RSS is the work's own:

- baseline: the same process start and imports, no query;
- load: `HistoryReader.read` of all targets over 14 days, as `prewarm serve` loads at start-up;
- prepare: `ForecastLoop.prepare` (load, pooled fit, first prediction), then one refresh a minute
  later, counting query_range calls.

Targets: load <= 10 s and <= 300 MB; a refresh <= 1 query per preset and namespace.

    python bench/history.py [--targets 100] [--days 14] [--namespaces 4] [--out bench/out]

Prints a table and writes JSON (bench/out/history.json). Needs prometheus and promtool on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESET = "knative"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def target_names(targets: int, namespaces: int) -> list[tuple[str, str]]:
    return [(f"bench{i % namespaces}", f"t{i:03d}") for i in range(targets)]


def write_history(path: Path, *, targets: int, namespaces: int, first_minute: int, minutes: int) -> int:
    """Dense counters (a sample every minute), as a scrape keeps them; returns the samples written."""
    import numpy as np

    rng = np.random.default_rng(1)
    metric = "kn_serving_invocation_duration_seconds_count"
    written = 0
    stamps = (np.arange(first_minute, first_minute + minutes + 1) * 60).astype(np.int64)
    hour_of_day = (np.arange(first_minute, first_minute + minutes) // 60) % 24
    with path.open("w", encoding="utf-8") as out:
        out.write(f"# TYPE {metric} unknown\n")
        for namespace, name in target_names(targets, namespaces):
            base = rng.uniform(0.05, 3.0)
            rate = base * (0.2 + np.where((hour_of_day >= 8) & (hour_of_day < 20), 1.0, 0.0))
            totals = np.concatenate(([0], np.cumsum(rng.poisson(rate))))
            labels = f'{metric}{{k8s_namespace_name="{namespace}",kn_service_name="{name}"}}'
            out.writelines(f"{labels} {total} {stamp}\n" for total, stamp in zip(totals, stamps, strict=True))
            written += stamps.size
        out.write("# TYPE up gauge\n")
        out.writelines(f'up{{job="bench"}} 1 {stamp}\n' for stamp in stamps)
        out.write("# EOF\n")
    return written + stamps.size


def start_prometheus(storage: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text("scrape_configs: []\n")
    process = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"GET /-/ready HTTP/1.0\r\n\r\n")
                if b" 200 " in conn.recv(64):
                    return process, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("prometheus did not start")


# --- the measured processes ---


def config_text(targets: int, namespaces: int, days: int) -> str:
    lines = ["targets:"]
    for namespace, name in target_names(targets, namespaces):
        lines.append(
            f"  - {{name: {namespace}/{name}, kind: keda, max: 10, "
            f"forecast: {{enabled: true, history: {PRESET}, historyDays: {days}}}}}"
        )
    return "\n".join(lines) + "\n"


async def child_run(mode: str, url: str, config: Path, now: datetime) -> dict[str, Any]:
    from prewarm.service import clock, config_file, forecast_loop, history
    from prewarm.service.store import MemoryStore

    specs = {str(s.ref): s for s in config_file.load_config_file(config).targets}
    settings = history.PrometheusSettings(url=url, timeout=timedelta(seconds=120))
    if mode == "baseline":
        return {"seconds": 0.0}
    session = history.open_session(settings)
    reader = history.HistoryReader(history.PrometheusClient(session=session, settings=settings))
    minute = int(now.timestamp() // 60)
    days = next(iter(specs.values())).forecast.history.days  # type: ignore[union-attr]
    try:
        if mode == "load":
            began = time.perf_counter()
            reads = await reader.read(list(specs.values()), first_minute=minute - days * 1440, end_minute=minute)
            seconds = time.perf_counter() - began
            unknown = sum(int((r.counts != r.counts).sum()) for r in reads.values() if r.counts is not None)
            errors = [r.error for r in reads.values() if r.error]
            return {
                "seconds": seconds,
                "calls": reader.calls,
                "targets": len(reads),
                "unknown": unknown,
                "errors": errors,
            }
        manual = clock.ManualClock(now)
        loop = forecast_loop.ForecastLoop(
            store=MemoryStore(),
            clock=manual,
            specs=lambda: specs,
            on_change=lambda _: None,
            history_reader=reader,
        )
        began = time.perf_counter()
        await loop.prepare()
        prepared = time.perf_counter() - began
        at_start = reader.calls
        manual.advance(timedelta(minutes=1))
        began = time.perf_counter()
        await loop.update(manual.now())
        refresh = time.perf_counter() - began
        served = sum(loop.current_forecast(s, manual.now()) is not None for s in specs.values())
        return {
            "seconds": prepared,
            "calls_at_start": at_start,
            "calls_per_refresh": reader.calls - at_start,
            "refresh_seconds": refresh,
            "forecasts_served": served,
        }
    finally:
        await session.close()


def child(mode: str, url: str, config: Path, now: str) -> None:
    result = asyncio.run(child_run(mode, url, config, datetime.fromisoformat(now)))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(mode: str, url: str, config: Path, now: datetime) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--url",
        url,
        "--config",
        str(config),
        "--now",
        now.isoformat(),
    ]
    output = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--child", choices=["baseline", "load", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.config, args.now)
        return
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        raise SystemExit("this benchmark needs prometheus and promtool on PATH")
    # the history ends a day before now: promtool must not write into a running head block's range
    now = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    minutes = args.days * 1440
    first = int(now.timestamp() // 60) - minutes
    with tempfile.TemporaryDirectory(prefix="prewarm-history-bench-") as folder:
        work = Path(folder)
        began = time.perf_counter()
        samples = write_history(
            work / "history.om", targets=args.targets, namespaces=args.namespaces, first_minute=first, minutes=minutes
        )
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"), str(work / "data")],
            check=True,
            capture_output=True,
        )
        (work / "history.om").unlink()
        setup = time.perf_counter() - began
        config = work / "targets.yaml"
        config.write_text(config_text(args.targets, args.namespaces, args.days))
        process, url = start_prometheus(work / "data", work)
        try:
            first_load = measure("load", url, config, now)  # Prometheus's first read of these blocks
            baseline = measure("baseline", url, config, now)
            load = measure("load", url, config, now)
            prepare = measure("prepare", url, config, now)
        finally:
            process.terminate()
            process.wait(timeout=30)
    groups = args.namespaces  # one preset, one group per namespace
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}".strip(),
        "targets": args.targets,
        "days": args.days,
        "namespaces": args.namespaces,
        "samples": samples,
        "setup_seconds": setup,
        "baseline": baseline,
        "first_load": first_load,
        "load": load,
        "prepare": prepare,
        "queries_per_refresh_per_group": prepare["calls_per_refresh"] / groups,
    }
    print(f"{args.targets} targets x {args.days} days at 1 min ({samples:,} samples, {groups} namespaces)")
    print("| run | seconds | peak RSS MiB | query_range calls |\n|---|---:|---:|---:|")
    print(f"| baseline: start and imports | - | {baseline['peak_rss_mib']:.0f} | 0 |")
    print(
        f"| load, Prometheus's first read of the blocks | {first_load['seconds']:.2f} | "
        f"{first_load['peak_rss_mib']:.0f} | {first_load['calls']} |"
    )
    print(f"| load: every target's 14 days | {load['seconds']:.2f} | {load['peak_rss_mib']:.0f} | {load['calls']} |")
    print(
        f"| prepare: load + fit + first prediction | {prepare['seconds']:.2f} | {prepare['peak_rss_mib']:.0f} "
        f"| {prepare['calls_at_start']} |"
    )
    print(
        f"| one refresh a minute later | {prepare['refresh_seconds']:.2f} | - | {prepare['calls_per_refresh']} "
        f"({record['queries_per_refresh_per_group']:.0f} per preset and namespace) |"
    )
    if load["errors"]:
        print("errors:", load["errors"][:3])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
