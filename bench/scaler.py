"""Scaler benchmark: GetMetrics over 1,000 ScaledObjects, and event -> StreamIsActive push latency.

In one run: redis-server on a free loopback port, `prewarm serve --store redis://... --grpc ...`
with 1,000 targets, and, as the baseline, a bare grpc.aio server whose GetMetrics returns a
constant. A separate client process calls GetMetrics on random ScaledObjects with concurrent
workers, against each server in alternating rounds. Then, with a StreamIsActive stream open, it
posts session events one at a time (opened, closed, ...) and measures from the 202 to the push.

    python bench/scaler.py [--rounds 3] [--seconds 5] [--concurrency 16] [--events 1000]

Prints a table and writes JSON (bench/out/scaler.json). Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


# This file is named like the `scaler` package it measures: keep its own folder off the import path
def _load_harness() -> Any:
    """bench/harness.py, loaded by location: this folder is kept off the import path (below)."""
    spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).with_name("harness.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
harness.keep_folder_off_path(Path(__file__).resolve().parent)

TARGETS = 1000


def bare_scaler(port: int) -> None:
    """The baseline: GetMetrics answers a constant, no lookup at all."""
    import grpc

    from prewarm.cli.process import event_loop_factory
    from scaler import externalscaler_pb2 as pb
    from scaler import externalscaler_pb2_grpc as pb_grpc

    class Constant(pb_grpc.ExternalScalerServicer):  # type: ignore[misc]
        async def GetMetrics(self, request: Any, context: Any) -> Any:
            return pb.GetMetricsResponse(
                metricValues=[pb.MetricValue(metricName="prewarm-floor", metricValue=1, metricValueFloat=1.0)]
            )

    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_ExternalScalerServicer_to_server(Constant(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def metrics_client(port: int, seconds: float, concurrency: int, result_path: str) -> None:
    """Runs in its own process: `concurrency` workers call GetMetrics on random ScaledObjects."""
    import grpc

    from scaler import externalscaler_pb2 as pb
    from scaler import externalscaler_pb2_grpc as pb_grpc

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        rng = random.Random(7)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            requests = [
                pb.GetMetricsRequest(
                    scaledObjectRef=pb.ScaledObjectRef(name=f"so{i}", namespace="bench"), metricName="prewarm-floor"
                )
                for i in range(TARGETS)
            ]
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    request = requests[rng.randrange(TARGETS)]
                    start = time.perf_counter()
                    try:
                        await stub.GetMetrics(request)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - start)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
        return {"latencies": latencies, "errors": errors, "elapsed": elapsed}

    with open(result_path, "w") as f:
        json.dump(asyncio.run(main()), f)


def run_metrics(port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    process = multiprocessing.get_context("spawn").Process(
        target=metrics_client, args=(port, seconds, concurrency, path)
    )
    process.start()
    process.join()
    with open(path) as f:
        raw = json.load(f)
    os.unlink(path)
    latencies = sorted(raw["latencies"])
    return {
        "calls": len(latencies),
        "errors": raw["errors"],
        "calls_per_s": len(latencies) / raw["elapsed"],
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


async def event_to_push(http_port: int, grpc_port: int, events: int) -> dict[str, float]:
    """Alternate opened/closed for one session; time from each 202 to the stream's push."""
    import aiohttp
    import grpc

    from scaler import externalscaler_pb2 as pb
    from scaler import externalscaler_pb2_grpc as pb_grpc

    samples: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        stream = stub.StreamIsActive(pb.ScaledObjectRef(name="push", namespace="bench"))
        first = await stream.read()
        assert first.result is False, "the push target must start inactive"
        headers = {"Content-Type": "application/cloudevents+json"}
        async with aiohttp.ClientSession() as http:
            for i in range(events):
                kind = "opened" if i % 2 == 0 else "closed"
                body = json.dumps(
                    {
                        "specversion": "1.0",
                        "type": f"dev.prewarm.session.{kind}",
                        "source": "/bench/push",
                        "id": f"push-{i}",
                        "data": {"target": "bench/push", "session": f"p{i // 2}"},
                    }
                ).encode()
                async with http.post(f"http://127.0.0.1:{http_port}/", data=body, headers=headers) as response:
                    assert response.status == 202, response.status
                acked = time.perf_counter()
                pushed = await asyncio.wait_for(stream.read(), timeout=5)
                samples.append(time.perf_counter() - acked)
                assert pushed.result is (kind == "opened"), (i, pushed.result)
        stream.cancel()
    samples.sort()
    return {
        "events": events,
        "p50_ms": 1000 * samples[len(samples) // 2],
        "p99_ms": 1000 * samples[int(len(samples) * 0.99)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/scaler.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="prewarm-bench-"))
    http_port, grpc_port, bare_port = harness.free_port(), harness.free_port(), harness.free_port()
    config = workdir / "targets.yaml"
    lines = ["targets:"]
    lines += [f"  - {{name: bench/so{i}, kind: keda, max: 8, min: {i % 3}}}" for i in range(TARGETS)]
    lines += ["  - {name: bench/push, kind: keda, max: 4, sessionsPerReplica: 1, hold: 0s}"]
    config.write_text("\n".join(lines) + "\n")

    processes: list[subprocess.Popen[bytes]] = []
    bare = multiprocessing.get_context("spawn").Process(target=bare_scaler, args=(bare_port,), daemon=True)
    try:
        redis, redis_url = harness.start_redis(workdir)
        processes.append(redis)
        processes.append(
            harness.start_serve(
                config, redis_url=redis_url, http_port=http_port, extra=["--grpc", f"127.0.0.1:{grpc_port}"]
            )
        )
        bare.start()
        for port in (grpc_port, bare_port):
            harness.wait_port(port)
        time.sleep(2)  # let the decider make its first decision for all 1,000 targets

        run_metrics(bare_port, 1, args.concurrency)
        run_metrics(grpc_port, 1, args.concurrency)
        rounds = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    "bare": run_metrics(bare_port, args.seconds, args.concurrency),
                    "prewarm": run_metrics(grpc_port, args.seconds, args.concurrency),
                    # one call at a time: latency without the client's own queueing
                    "bare_sequential": run_metrics(bare_port, args.seconds, 1),
                    "prewarm_sequential": run_metrics(grpc_port, args.seconds, 1),
                }
            )
        push = asyncio.run(event_to_push(http_port, grpc_port, args.events))
    finally:
        harness.stop(processes)
        if bare.is_alive():
            bare.terminate()
            bare.join()
        shutil.rmtree(workdir, ignore_errors=True)

    def median_row(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in rows) for k in ("calls_per_s", "p50_ms", "p99_ms", "errors")}

    baseline = median_row([r["bare"] for r in rounds])
    prewarm = median_row([r["prewarm"] for r in rounds])
    baseline_seq = median_row([r["bare_sequential"] for r in rounds])
    prewarm_seq = median_row([r["prewarm_sequential"] for r in rounds])
    ratios = [r["prewarm"]["calls_per_s"] / r["bare"]["calls_per_s"] for r in rounds]
    result = {
        "benchmark": "scaler",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "scaled_objects": TARGETS,
        "concurrency": args.concurrency,
        "rounds": rounds,
        "bare_get_metrics": baseline,
        "prewarm_get_metrics": prewarm,
        "bare_get_metrics_sequential": baseline_seq,
        "prewarm_get_metrics_sequential": prewarm_seq,
        "ratio_vs_bare": statistics.median(ratios),
        "ratio_per_round": ratios,
        "event_to_push": push,
        "targets": {"get_metrics_p99_ms": 2, "event_to_push_p99_ms": 20},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"GetMetrics over {TARGETS} ScaledObjects, medians of {args.rounds} alternating rounds of {args.seconds:g} s")
    print(f"{'server':<30}{'in flight':>10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, row, flight in (
        ("bare grpc.aio constant", baseline, args.concurrency),
        ("prewarm scaler (redis)", prewarm, args.concurrency),
        ("bare grpc.aio constant", baseline_seq, 1),
        ("prewarm scaler (redis)", prewarm_seq, 1),
    ):
        print(
            f"{name:<30}{flight:>10}{row['calls_per_s']:>10.0f}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
            f"{row['errors']:>8.0f}"
        )
    print(f"ratio prewarm/bare: {result['ratio_vs_bare']:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(
        f"event accepted -> StreamIsActive push over {push['events']} events: "
        f"p50 {push['p50_ms']:.2f} ms, p99 {push['p99_ms']:.2f} ms"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
