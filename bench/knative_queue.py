"""Knative floors through the reconciler while part of the API stalls.

1,000 Knative Services on the API test server (tests/kube_api_server.py, in its own process). The
Knative actuator runs behind its reconciler (prewarm/service/reconciler.py) as `prewarm serve`
runs it. Floors change in rounds (every target's floor moves each round). In one run:

- baseline: no stalls;
- stalled: every call for 5% of the Services hangs (the API server accepts it and never answers;
  the client gives up at its timeout), for the whole run.

The reconciler has as many workers as `prewarm serve` gives it (the Kubernetes session's
connections less those kept for the Lease and discovery).

For the healthy 95%: decision -> floor observed applied, p50/p99, and the ratio stalled/baseline.
The stalled ones are reported apart (they land only once the API answers).

    python bench/knative_queue.py [--services 1000] [--stalled 0.05] [--rounds 3]

Prints a table and writes JSON (bench/out/knative_queue.json).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[1]
harness = _load(ROOT / "bench" / "harness.py", "bench_harness")
harness.keep_folder_off_path(ROOT / "bench")


def stalled_names(services: int, share: float) -> set[str]:
    """Every 1/share-th Service (spread evenly)."""
    if share <= 0:
        return set()
    step = max(1, round(1 / share))
    return {f"svc{i}" for i in range(0, services, step)}


def serve_fake_api(port: int, services: int, stalled: list[str]) -> None:
    """The API test server with `services` Services; calls naming a `stalled` one never answer."""
    from aiohttp import web

    fake = _load(ROOT / "tests" / "kube_api_server.py", "kube_api_server").KubeAPIServer()
    fake.namespaces["knative-serving"] = {
        "metadata": {"name": "knative-serving", "labels": {"app.kubernetes.io/version": "1.23.0"}}
    }
    for i in range(services):
        fake.add_routed_service("bench", f"svc{i}")
    hanging = {f"/{name}" for name in stalled} | {f"/{name}-00001" for name in stalled}
    never = asyncio.Event()

    @web.middleware
    async def stall(request: web.Request, handler: Any) -> Any:
        if any(request.path.endswith(suffix) for suffix in hanging):
            await never.wait()
        return await handler(request)

    fake.app.middlewares.append(stall)
    # shutdown_timeout: the stalled handlers never end; they are not waited for on exit
    web.run_app(fake.app, host="127.0.0.1", port=port, access_log=None, print=None, shutdown_timeout=1)


async def measure(port: int, services: int, rounds: int, stalled: set[str], client_timeout: float) -> dict[str, Any]:
    from kubernetes import client as k8s

    from knative import kube_api, kube_connection
    from knative.actuator import KnativeActuator
    from prewarm.core import actuation, policy, targets
    from prewarm.service import clock, composition, reconciler

    configuration = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    session = kube_connection.open_session(configuration)
    api = kube_api.KubeAPI(configuration, session, timeout=client_timeout)
    knative = KnativeActuator(api)
    await knative.installed_version()  # once per process, not per decision
    submitted: dict[tuple[str, int], float] = {}
    landed: dict[tuple[str, int], float] = {}

    class Timed:
        """The Knative actuator, noting when each floor was observed applied."""

        name = "knative"

        async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> Any:
            result = await knative.apply(decision, previous)
            if result.outcome is actuation.Outcome.APPLIED:
                landed.setdefault((decision.target, decision.floor), time.perf_counter())
            return result

        async def release(self, target: str) -> Any:
            return await knative.release(target)

    workers = max(1, api.max_in_flight - composition.KUBE_RESERVED)  # as `prewarm serve` sizes them
    queue = reconciler.Reconciler(Timed(), clock=clock.SystemClock(), workers=workers)
    running = asyncio.create_task(queue.run())
    names = [f"svc{i}" for i in range(services)]
    healthy = [n for n in names if n not in stalled]
    try:
        for round_ in range(rounds):
            floor = 2 + round_
            for name in names:
                spec = targets.TargetSpec(
                    ref=targets.TargetRef("bench", name), kind=targets.TargetKind.KNATIVE, max=8, sessions_per_replica=1
                )
                decision = policy.decide_floor(spec, policy.Signals(sessions=floor), datetime.now(UTC), None)
                submitted[(decision.target, floor)] = time.perf_counter()
                queue.submit(decision)
            deadline = time.perf_counter() + 60
            while not all((f"bench/{n}", floor) in landed for n in healthy):
                if time.perf_counter() > deadline:
                    raise RuntimeError("healthy targets did not land within 60 s")
                await asyncio.sleep(0.005)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await session.close()
    latencies = sorted(
        landed[key] - submitted[key] for key in submitted if key in landed and key[0].split("/")[1] not in stalled
    )
    return {
        "healthy_floors": len(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "stalled_targets": len(stalled),
        "stalled_floors_landed": sum(1 for key in landed if key[0].split("/")[1] in stalled),
        "retries": queue.retries,
        "workers": workers,
    }


def run(services: int, rounds: int, share: float, timeout: float) -> dict[str, Any]:
    stalled = stalled_names(services, share)
    port = harness.free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=serve_fake_api, args=(port, services, sorted(stalled)), daemon=True
    )
    server.start()
    try:
        harness.wait_port(port)
        return asyncio.run(measure(port, services, rounds, stalled, timeout))
    finally:
        server.terminate()
        server.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--stalled", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=2.0, help="the API client's per-call timeout (s)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/knative_queue.json"))
    args = parser.parse_args()
    baseline = run(args.services, args.rounds, 0.0, args.timeout)
    stalled = run(args.services, args.rounds, args.stalled, args.timeout)
    result = {
        "benchmark": "knative_queue",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "services": args.services,
        "rounds": args.rounds,
        "stalled_share": args.stalled,
        "client_timeout_s": args.timeout,
        "baseline": baseline,
        "stalled": stalled,
        "ratio_p50": stalled["p50_ms"] / baseline["p50_ms"],
        "ratio_p99": stalled["p99_ms"] / baseline["p99_ms"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.services} Services, {args.rounds} rounds of floor changes, {baseline['workers']} reconciler workers, "
        "API test server in its own process"
    )
    print(f"{'healthy targets':<34}{'floors':>8}{'p50 ms':>9}{'p99 ms':>9}{'retries':>9}")
    for name, row in (("no stalls (baseline)", baseline), (f"{args.stalled:.0%} of Services stalled", stalled)):
        print(f"{name:<34}{row['healthy_floors']:>8}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['retries']:>9}")
    print(
        f"ratio stalled/baseline: p50 {result['ratio_p50']:.2f}, p99 {result['ratio_p99']:.2f}; "
        f"stalled targets: {stalled['stalled_targets']}, their floors landed: {stalled['stalled_floors_landed']}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
