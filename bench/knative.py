"""Knative actuator benchmark: 500 Services, one floor change each, against the API test server.

The server (tests/kube_api_server.py, Kubernetes' merge-patch and resourceVersion semantics) runs
in its own process. In one run:

- baseline: one raw merge patch per Revision through the same client, as many in flight;
- actuator: `KnativeActuator.apply` for each Service's decision (read Service, read Revision,
  patch), timing each from the decision to the patch acknowledged;
- unchanged: the same decisions again, which must issue no patch.

    python bench/knative.py [--services 500] [--workers 8]

Prints a table and writes JSON (bench/out/knative.json).
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
    """A module by file location (bench/ and tests/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[1]
harness = _load(ROOT / "bench" / "harness.py", "bench_harness")
harness.keep_folder_off_path(ROOT / "bench")


def serve_fake_api(port: int, services: int) -> None:
    """The API test server with `services` Services, each routing to one Revision."""
    from aiohttp import web

    fake = _load(ROOT / "tests" / "kube_api_server.py", "kube_api_server").KubeAPIServer()
    fake.namespaces["knative-serving"] = {
        "metadata": {"name": "knative-serving", "labels": {"app.kubernetes.io/version": "1.23.0"}}
    }
    for i in range(services):
        fake.add_routed_service("bench", f"svc{i}", revision_annotations={"autoscaling.knative.dev/max-scale": "8"})
    web.run_app(fake.app, host="127.0.0.1", port=port, access_log=None, print=None)


async def measure(port: int, services: int, workers: int) -> dict[str, Any]:
    from kubernetes import client as k8s

    from knative import kube_api, kube_connection
    from knative.actuator import KnativeActuator
    from prewarm.core import policy, targets

    configuration = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    session = kube_connection.open_session(configuration)
    api = kube_api.KubeAPI(configuration, session)
    limit = asyncio.Semaphore(workers)

    async def timed(call: Any) -> float:
        async with limit:
            began = time.perf_counter()
            await call
            return time.perf_counter() - began

    def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
        ordered = sorted(latencies)
        return {
            "per_s": len(ordered) / elapsed,
            "p50_ms": 1000 * ordered[len(ordered) // 2],
            "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
        }

    try:
        began = time.perf_counter()
        raw = await asyncio.gather(
            *(
                timed(
                    api.patch_floor_object(
                        "revision", "bench", f"svc{i}-00001", {"metadata": {"annotations": {"bench/raw": "1"}}}
                    )
                )
                for i in range(services)
            )
        )
        baseline = summary(list(raw), time.perf_counter() - began)

        actuator = KnativeActuator(api)
        await actuator.installed_version()  # version detection is once per process, not per decision
        decisions = [
            policy.decide_floor(
                targets.TargetSpec(
                    ref=targets.TargetRef("bench", f"svc{i}"),
                    kind=targets.TargetKind.KNATIVE,
                    max=8,
                    sessions_per_replica=1,
                ),
                policy.Signals(sessions=2),
                datetime.now(UTC),
                None,
            )
            for i in range(services)
        ]
        began = time.perf_counter()
        applied = await asyncio.gather(*(timed(actuator.apply(d, None)) for d in decisions))
        changed = summary(list(applied), time.perf_counter() - began)
        patched = actuator.counts["patched"]

        began = time.perf_counter()
        again = await asyncio.gather(*(timed(actuator.apply(d, None)) for d in decisions))
        unchanged = summary(list(again), time.perf_counter() - began)
        return {
            "baseline_raw_patch": baseline,
            "actuator_floor_change": changed,
            "actuator_unchanged": unchanged,
            "patches_issued": patched,
            "patches_issued_when_unchanged": actuator.counts["patched"] - patched,
        }
    finally:
        await session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/out/knative.json"))
    args = parser.parse_args()
    port = harness.free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=serve_fake_api, args=(port, args.services), daemon=True
    )
    server.start()
    try:
        harness.wait_port(port)
        result = asyncio.run(measure(port, args.services, args.workers))
    finally:
        server.terminate()
        server.join()
    result.update(
        {
            "benchmark": "knative",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "services": args.services,
            "workers": args.workers,
            "ratio_vs_raw_patch": result["actuator_floor_change"]["per_s"] / result["baseline_raw_patch"]["per_s"],
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.services} Services, {args.workers} calls in flight, API test server in its own process")
    print(f"{'pass':<34}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, key in (
        ("raw merge patch (baseline)", "baseline_raw_patch"),
        ("actuator: floor change", "actuator_floor_change"),
        ("actuator: same floor again", "actuator_unchanged"),
    ):
        row = result[key]
        print(f"{name:<34}{row['per_s']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}")
    print(
        f"ratio actuator/raw patch: {result['ratio_vs_raw_patch']:.2f}; patches issued: {result['patches_issued']}, "
        f"when unchanged: {result['patches_issued_when_unchanged']}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
