"""A planned Sentinel failover under load: what the store loses and refuses, with and without
following the switch.

A master, `--replicas` replicas (2) and three Sentinels on loopback (tests/support.py); `--rate` events/s
written through the store for `--seconds`, `SENTINEL FAILOVER` after 2 s (the old master stays
up, as in an upgrade). Each run is measured twice in the same session: with the store as built
(`RedisStore.from_url`: it follows `+switch-master` and the leader's promotion) and with redis-py's
Sentinel pool alone (the baseline: it asks the Sentinels only when a connection fails), each with
`--redis-wait-replicas` 0 and 1. Prints a table and writes JSON.

    python bench/failover.py [--replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.sentinel as aioredis_sentinel

from prewarm.core import ledger
from prewarm.service import redis_connection
from prewarm.service.store import Intent, RedisStore, StateUnavailable


def _support() -> ModuleType:
    """tests/support.py (the real servers the tests start), loaded by location."""
    path = Path(__file__).resolve().parents[1] / "tests" / "support.py"
    spec = importlib.util.spec_from_file_location("test_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["test_support"] = module
    spec.loader.exec_module(module)
    return module


support = _support()


def redis_py_pool_only(url: str, *, wait_replicas: int) -> RedisStore:
    """The store on redis-py's Sentinel pool alone, as it was built before it followed switches."""
    deployment = redis_connection.parse_redis_url(url)
    assert deployment.service is not None
    timeouts: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    sentinel = aioredis_sentinel.Sentinel(
        list(deployment.nodes),
        sentinel_kwargs={**timeouts, "retry": redis_connection.fail_fast_retry()},
        retry=redis_connection.fail_fast_retry(),
        **timeouts,
    )
    client = sentinel.master_for(
        deployment.service, db=deployment.db, health_check_interval=10, password=deployment.password
    )
    return RedisStore(client, deployment=deployment, sentinel=sentinel, wait_replicas=wait_replicas)


async def run(store_kind: str, wait_replicas: int, *, rate: int, seconds: int, replicas: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        group = support.SentinelGroup(Path(workdir), replicas=replicas)
        group.start()
        try:
            if store_kind == "followed":
                store = RedisStore.from_url(group.url, wait_replicas=wait_replicas)
            else:
                store = redis_py_pool_only(group.url, wait_replicas=wait_replicas)
            store.add_change_listener(lambda target: None)  # a pub/sub subscription, as serve has
            old_master = group.master_port()
            outcomes: dict[str, str] = {}
            try:
                await store.start()
                await store.ping()
                if store_kind == "followed":
                    await support.wait_for(lambda: all(group.switch_subscribers(i) >= 1 for i in range(3)), within=10)

                async def send(event_id: str) -> None:
                    at = datetime.now(UTC)
                    event = ledger.SessionEvent(ledger.SessionEventType.OPENED, event_id, at, timedelta(minutes=5))
                    outcomes[event_id] = "hung"
                    try:
                        async with asyncio.timeout(5.0):
                            await store.record_intents([Intent("ml/chat", "/bench", event_id, event)])
                        outcomes[event_id] = "acknowledged"
                    except (StateUnavailable, TimeoutError):
                        outcomes[event_id] = "unavailable"

                sent = []
                start = time.monotonic()
                failed_over = False
                for i in range(rate * seconds):
                    sent.append(asyncio.create_task(send(f"e{i:04d}")))
                    if not failed_over and time.monotonic() - start >= 2.0:
                        group.failover(0)
                        failed_over = True
                    await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
                await asyncio.gather(*sent)
            finally:
                await store.close()
            new_master = group.master_port()
            assert new_master is not None and new_master != old_master, "no switch"
            client = aioredis.Redis(port=new_master, password=group.password)
            try:
                stored = {m.decode() for m in await client.zrange("prewarm:{ml/chat}:sessions", 0, -1)}
            finally:
                await client.aclose()
        finally:
            group.stop()
    acknowledged = [e for e, outcome in outcomes.items() if outcome == "acknowledged"]
    lost = [e for e in acknowledged if e not in stored]
    unavailable = sum(outcome == "unavailable" for outcome in outcomes.values())
    return {
        "store": store_kind,
        "wait_replicas": wait_replicas,
        "sent": len(outcomes),
        "acknowledged": len(acknowledged),
        "lost": len(lost),
        "lost_seconds": len(lost) / rate,
        "unavailable_seconds": unavailable / rate,
        "hung": sum(outcome == "hung" for outcome in outcomes.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=10, help="events per second")
    parser.add_argument("--seconds", type=int, default=15, help="seconds of load per run")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of the master")
    parser.add_argument("--out", type=Path, default=Path("bench/out/failover.json"))
    args = parser.parse_args()
    rows = []
    for wait_replicas in (0, 1):
        for store_kind in ("redis-py pool", "followed"):
            rows.append(
                asyncio.run(
                    run(store_kind, wait_replicas, rate=args.rate, seconds=args.seconds, replicas=args.replicas)
                )
            )
    print(f"{'store':<14} {'wait':>4} {'sent':>5} {'202':>5} {'lost':>5} {'lost s':>7} {'503 s':>6} {'hung':>5}")
    for row in rows:
        print(
            f"{row['store']:<14} {row['wait_replicas']:>4} {row['sent']:>5} {row['acknowledged']:>5} {row['lost']:>5} "
            f"{row['lost_seconds']:>7.1f} {row['unavailable_seconds']:>6.1f} {row['hung']:>5}"
        )
    for wait_replicas in (0, 1):
        base, followed = (r for r in rows if r["wait_replicas"] == wait_replicas)
        print(
            f"wait {wait_replicas}: intent lost or refused, followed/baseline = "
            f"{followed['lost_seconds'] + followed['unavailable_seconds']:.1f} s / "
            f"{base['lost_seconds'] + base['unavailable_seconds']:.1f} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rate": args.rate, "seconds": args.seconds, "replicas": args.replicas, "runs": rows}, indent=2)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
