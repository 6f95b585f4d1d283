"""Ingest benchmark: intent events/s and latency against `prewarm serve` with the Redis store.

In one run: start redis-server on a free loopback port, start `prewarm serve --store redis://...`
and a bare aiohttp handler that answers 202, and load each from a separate client process with
the same structured-mode CloudEvents. Then, one event at a time, measure the time from the 202 to
the new decision arriving on the store's pub/sub channel (accept -> floor published).

    python bench/ingest.py [--rounds 5] [--seconds 5] [--concurrency 32] [--out bench/out/ingest.json]

Prints a table and writes JSON. Needs redis-server on PATH; uses wrk (Debian package `wrk`) as the
load generator when installed, else a Python aiohttp client process (which itself saturates a core
on a 2-core machine, so it under-reports both servers).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
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


# bench/scaler.py is named like the `scaler` package: keep this folder off the import path (here
def _load_harness() -> Any:
    """bench/harness.py, loaded by location: this folder is kept off the import path (below)."""
    spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).with_name("harness.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
harness.keep_folder_off_path(Path(__file__).resolve().parent)

TARGETS = 50


def bare_server(port: int) -> None:
    """The baseline: an aiohttp app that reads the body and answers 202."""
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    from prewarm.cli.process import event_loop_factory

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/", accept)
    factory = event_loop_factory()  # the same event loop as prewarm serve, so the ratio is fair
    loop = factory() if factory is not None else None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def event_body(i: int, run: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": f"/bench/{run}",
            "id": f"{run}-{i}",
            "data": {"target": f"bench/t{i % TARGETS}", "session": f"{run}-s{i}"},
        },
        separators=(",", ":"),
    ).encode()


def load_client(port: int, seconds: float, concurrency: int, run: str, result_path: str) -> None:
    """Runs in its own process: `concurrency` workers post events for `seconds`."""
    import aiohttp

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        counter = iter(range(10**9))
        url = f"http://127.0.0.1:{port}/"
        headers = {"Content-Type": "application/cloudevents+json"}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:
            end = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < end:
                    body = event_body(next(counter), run)
                    start = time.perf_counter()
                    async with http.post(url, data=body, headers=headers) as response:
                        await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                    latencies.append(time.perf_counter() - start)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
        return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}

    with open(result_path, "w") as f:
        json.dump(asyncio.run(main()), f)


WRK_SCRIPT = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/cloudevents+json"
request = function()
  counter = counter + 1
  local body = string.format('{"specversion":"1.0","type":"dev.prewarm.session.opened","source":"/bench/%s",'
    .. '"id":"%d-%d","data":{"target":"bench/t%d","session":"s%d-%d"}}',
    RUN, math.random(1, 1000000000), counter, counter % TARGETS, math.random(1, 1000000000), counter)
  return wrk.format(nil, "/", nil, body)
end
"""


def run_wrk(port: int, seconds: float, concurrency: int, run: str) -> dict[str, Any]:
    """Load with wrk (one thread, `concurrency` connections): a client far lighter than Python's."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'RUN = "{run}"\nTARGETS = {TARGETS}\n' + WRK_SCRIPT)
        script = f.name
    try:
        output = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{int(seconds)}s",
                "-s",
                script,
                "--latency",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)

    def latency_ms(label: str) -> float:
        value = next(line.split()[1] for line in output.splitlines() if line.strip().startswith(label))
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * scale
        raise ValueError(value)

    requests = int(next(line.split()[0] for line in output.splitlines() if "requests in" in line))
    non_2xx = sum(int(line.split()[-1]) for line in output.splitlines() if "Non-2xx" in line)
    rate = float(next(line.split()[1] for line in output.splitlines() if line.startswith("Requests/sec")))
    return {
        "client": "wrk",
        "requests": requests,
        "accepted": requests - non_2xx,
        "events_per_s": rate * (requests - non_2xx) / max(1, requests),
        "p50_ms": latency_ms("50%"),
        "p99_ms": latency_ms("99%"),
    }


def run_load(port: int, seconds: float, concurrency: int, run: str) -> dict[str, Any]:
    if shutil.which("wrk") is not None:
        return run_wrk(port, seconds, concurrency, run)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    process = multiprocessing.get_context("spawn").Process(
        target=load_client, args=(port, seconds, concurrency, run, path)
    )
    process.start()
    process.join()
    with open(path) as f:
        raw = json.load(f)
    os.unlink(path)
    latencies = sorted(raw["latencies"])
    accepted = raw["statuses"].get("202", 0)
    return {
        "client": "python-aiohttp",
        "requests": len(latencies),
        "accepted": accepted,
        "statuses": raw["statuses"],
        "events_per_s": accepted / raw["elapsed"],
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


async def accept_to_floor(http_port: int, redis_url: str, events: int) -> dict[str, float]:
    """One event at a time: 202 received -> decision with the new floor seen on pub/sub."""
    import aiohttp
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("prewarm:decisions")
    samples: list[float] = []
    url = f"http://127.0.0.1:{http_port}/"
    headers = {"Content-Type": "application/cloudevents+json"}
    async with aiohttp.ClientSession() as http:
        for i in range(events):
            body = json.dumps(
                {
                    "specversion": "1.0",
                    "type": "dev.prewarm.session.opened",
                    "source": "/bench/floor",
                    "id": f"floor-{i}",
                    "data": {"target": "bench/floor", "session": f"floor-s{i}"},
                }
            ).encode()
            async with http.post(url, data=body, headers=headers) as response:
                assert response.status == 202, response.status
            acked = time.perf_counter()
            while True:
                # None also means a subscribe confirmation was skipped: only the deadline fails.
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    if time.perf_counter() - acked > 5.0:
                        raise RuntimeError("no decision published within 5 s")
                    continue
                published = [json.loads(line) for line in message["data"].split(b"\n")]  # a batch per message
                if any(d["target"] == "bench/floor" and d["floor"] == i + 1 for d in published):
                    samples.append(time.perf_counter() - acked)
                    break
    await pubsub.aclose()
    await client.aclose()
    samples.sort()
    return {
        "events": events,
        "p50_ms": 1000 * samples[len(samples) // 2],
        "p99_ms": 1000 * samples[int(len(samples) * 0.99)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--floor-events", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/ingest.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="prewarm-bench-"))
    serve_port, bare_port = harness.free_port(), harness.free_port()
    config = workdir / "targets.yaml"
    lines = ["targets:"]
    lines += [f"  - {{name: bench/t{i}, kind: keda, max: 1000000, hold: 0s}}" for i in range(TARGETS)]
    lines += ["  - {name: bench/floor, kind: keda, max: 1000000, sessionsPerReplica: 1, hold: 0s}"]
    config.write_text("\n".join(lines) + "\n")

    processes: list[subprocess.Popen[bytes]] = []
    bare = multiprocessing.get_context("spawn").Process(target=bare_server, args=(bare_port,), daemon=True)
    try:
        redis, redis_url = harness.start_redis(workdir)
        processes.append(redis)
        processes.append(harness.start_serve(config, redis_url=redis_url, http_port=serve_port))
        bare.start()
        harness.wait_port(bare_port)

        run_load(bare_port, 2, args.concurrency, "warmupbare")
        run_load(serve_port, 2, args.concurrency, "warmupserve")
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
            bare_round = run_load(bare_port, args.seconds, args.concurrency, f"bare{r}")
            serve_round = run_load(serve_port, args.seconds, args.concurrency, f"serve{r}")
            rounds.append({"bare": bare_round, "prewarm": serve_round})
        floor = asyncio.run(accept_to_floor(serve_port, redis_url, args.floor_events))
    finally:
        harness.stop(processes)
        if bare.is_alive():
            bare.terminate()
            bare.join()
        shutil.rmtree(workdir, ignore_errors=True)

    def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            key: statistics.median(row[key] for row in rows)
            for key in ("events_per_s", "p50_ms", "p99_ms", "requests", "accepted")
        } | {"client": rows[0]["client"]}

    baseline = median_row([r["bare"] for r in rounds])
    prewarm = median_row([r["prewarm"] for r in rounds])
    ratios = [r["prewarm"]["events_per_s"] / r["bare"]["events_per_s"] for r in rounds]
    ratio = statistics.median(ratios)
    result = {
        "benchmark": "ingest",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds_per_round": args.seconds,
        "rounds_count": args.rounds,
        "concurrency": args.concurrency,
        "bare_aiohttp_202": baseline,
        "prewarm_serve_redis": prewarm,
        "ratio_vs_bare": ratio,
        "ratio_per_round": ratios,
        "rounds": rounds,
        "accept_to_floor_published": floor,
        "targets": {"events_per_s": 5000, "ratio_vs_bare": 0.5, "accept_to_floor_p99_ms": 10},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"medians of {args.rounds} alternating rounds of {args.seconds:g} s, {args.concurrency} connections")
    print(f"{'server':<28}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-202':>9}")
    for name, row in (("bare aiohttp 202", baseline), ("prewarm serve (redis)", prewarm)):
        other = row["requests"] - row["accepted"]
        print(f"{name:<28}{row['events_per_s']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{other:>9}")
    print(f"ratio prewarm/bare: {ratio:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(
        f"accept -> floor published over {floor['events']} events: p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
