"""Soak benchmark: events at a steady rate against two `prewarm serve` replicas on one Redis, with
a Redis restart and a kill -9 of the deciding replica on the way.

    python bench/soak.py [--minutes 60] [--rate 1000] [--targets 50] [--lease 10] [--out bench/out/soak.json]

Measures, against the issue's aims:
- acknowledged events lost (must be 0): every event answered 202 must have its dedup key in Redis
  at the end (24 h keys; checked one by one);
- floor convergence after each fault (<= 2 s): probe targets (one replica per session, no hold)
  get one more session right after the fault; the time until both replicas' stored decision has
  the new floor, from the fault's end (Redis answering again; for the kill, the survivor holding
  every lease, which takes up to the lease) and from the fault's start;
- RSS of each replica over time (growth <= 5% after the first 5 minutes);
- p99 accept latency per window (5 minutes by default).

The load is open-loop from a separate process: `--rate` events/s (60% opened, 30% heartbeats,
10% closed), round-robin over the replicas, each event retried with backoff (same id) until 202.
Redis runs with an append-only file fsynced every second, as the manifests run it; the restart is
graceful (SIGTERM), the replica kill is not. Prints a table and writes JSON.
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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _load_harness() -> Any:
    """bench/harness.py, loaded by location: this folder is kept off the import path (below)."""
    spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).with_name("harness.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
harness.keep_folder_off_path(Path(__file__).resolve().parent)

PROBES = 3
SOURCE = "/soak"
MAX_IN_FLIGHT = 512
RETRY_FOR = 120.0  # seconds an event is retried before it counts as never acknowledged


def load_target(seq: int, targets: int) -> tuple[str, str, str]:
    """(type, target, session) of event `seq`: sessions open at seq % 10 in 0..5, get heartbeats at
    6..8 and close at 9, each session always on its own target."""
    kind = seq % 10
    if kind <= 5:
        base, event_type = seq, "opened"
    elif kind <= 8:
        base, event_type = seq - kind, "heartbeat"
    else:
        base, event_type = seq - 29, "closed"
    return f"dev.prewarm.session.{event_type}", f"soak/t{(base // 10) % targets}", f"s{base}"


def dedup_key(target: str, event_id: str) -> str:
    return f"prewarm:{{{target}}}:dedup:" + json.dumps([SOURCE, event_id], separators=(",", ":"))


# --- the load, in its own process ---


def run_load(ports: list[int], rate: float, seconds: float, targets: int, window: float, result_path: str) -> None:
    """Send `rate` events/s for `seconds`; write what was acknowledged and the latencies per window."""
    import aiohttp

    from prewarm.cli.process import event_loop_factory

    async def main() -> tuple[dict[str, Any], bytearray]:
        total = int(rate * seconds)
        acked = bytearray(total)
        never: list[int] = []
        windows: dict[int, dict[str, Any]] = {}
        state = {"retries": 0, "lagged": 0, "next_port": 0}
        headers = {"Content-Type": "application/cloudevents+json"}
        began = time.perf_counter()

        def window_of(at: float) -> dict[str, Any]:
            index = int((at - began) // window)
            return windows.setdefault(index, {"latencies": [], "statuses": {}, "sent": 0})

        async def send(http: aiohttp.ClientSession, seq: int) -> None:
            event_type, target, session = load_target(seq, targets)
            body = json.dumps(
                {
                    "specversion": "1.0",
                    "type": event_type,
                    "source": SOURCE,
                    "id": f"e{seq}",
                    "data": {"target": target, "session": session},
                },
                separators=(",", ":"),
            ).encode()
            first = time.perf_counter()
            window_of(first)["sent"] += 1
            backoff = 0.05
            while True:
                port = ports[state["next_port"] % len(ports)]
                state["next_port"] += 1
                start = time.perf_counter()
                try:
                    async with http.post(f"http://127.0.0.1:{port}/events", data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError, OSError):
                    status = 0  # the replica is gone: the next try goes to the other one
                done = time.perf_counter()
                counts = window_of(start)["statuses"]
                counts[status] = counts.get(status, 0) + 1
                if status == 202:
                    acked[seq] = 1
                    window_of(start)["latencies"].append(done - start)
                    return
                if status not in (0, 503) or done - first > RETRY_FOR:
                    never.append(seq)
                    return
                state["retries"] += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            seq = 0
            while seq < total:
                due = min(total, int((time.perf_counter() - began) * rate) + 1)
                while seq < due:
                    if len(in_flight) >= MAX_IN_FLIGHT:
                        state["lagged"] += 1
                        break
                    task = asyncio.create_task(send(http, seq))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    seq += 1
                await asyncio.sleep(0.002)
            if in_flight:
                await asyncio.wait(in_flight, timeout=RETRY_FOR + 15)
        summary = []
        for index in sorted(windows):
            latencies = sorted(windows[index]["latencies"])
            summary.append(
                {
                    "window": index,
                    "sent": windows[index]["sent"],
                    "accepted": len(latencies),
                    "statuses": {str(k): v for k, v in sorted(windows[index]["statuses"].items())},
                    "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
                    "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
                    "max_ms": 1000 * latencies[-1] if latencies else None,
                }
            )
        return {
            "sent": total,
            "acknowledged": sum(acked),
            "never_acknowledged": len(never),
            "retries": state["retries"],
            "lagged_ticks": state["lagged"],
            "elapsed_s": time.perf_counter() - began,
            "windows": summary,
        }, acked

    factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        result, acked = runner.run(main())
    Path(result_path + ".acked").write_bytes(bytes(acked))
    Path(result_path).write_text(json.dumps(result))


# --- the soak itself ---


class Soak:
    """Redis, two replicas and the probes; faults and what they cost."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.config = workdir / "targets.yaml"
        lines = [
            f"  - {{name: soak/t{i}, kind: keda, max: 100000, sessionsPerReplica: 8, sessionTTL: 2m}}"
            for i in range(args.targets)
        ]
        lines += [
            f"  - {{name: soak/probe-{k}, kind: keda, max: 100000, sessionsPerReplica: 1, sessionTTL: 2h, hold: 0s}}"
            for k in range(PROBES)
        ]
        self.config.write_text("targets:\n" + "\n".join(lines) + "\n")
        self.redis_dir = workdir / "redis"
        self.redis_dir.mkdir()
        self.redis_port = harness.free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.replicas: dict[str, dict[str, Any]] = {}  # name -> {port, process, rss: [(t, kB)], started}
        self.probe_sessions = [0] * PROBES
        self.began = time.monotonic()
        self.faults: list[dict[str, Any]] = []

    @property
    def names(self) -> list[str]:
        return [f"soak/t{i}" for i in range(self.args.targets)] + [f"soak/probe-{k}" for k in range(PROBES)]

    def start_redis(self) -> None:
        self.redis, _ = harness.start_redis(self.redis_dir, port=self.redis_port, persistent=True)

    def start_replica(self, name: str, port: int | None = None) -> None:
        port = port or harness.free_port()
        process = harness.start_serve(
            self.config,
            redis_url=self.redis_url,
            http_port=port,
            extra=["--decider-lease", str(self.args.lease)],
            env={"POD_NAME": name},
        )
        previous = self.replicas.get(name, {})
        self.replicas[name] = {
            "port": port,
            "process": process,
            "rss": previous.get("rss", []),
            "started": [*previous.get("started", []), self.elapsed()],
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def sample_rss(self) -> None:
        for replica in self.replicas.values():
            process = replica["process"]
            if process.poll() is not None:
                continue
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            replica["rss"].append((round(self.elapsed(), 1), kb, process.pid))

    async def lease_holders(self, client: Any) -> list[str]:
        tokens = await client.mget([f"prewarm:{{{name}}}:leader" for name in self.names])
        return [token.decode().split("|", 1)[1].rsplit("-", 1)[0] if token else "" for token in tokens]

    async def probe(self, http: Any) -> None:
        """One more session on every probe target, through any replica, retried until 202."""
        for k in range(PROBES):
            self.probe_sessions[k] += 1
            event = {
                "specversion": "1.0",
                "type": "dev.prewarm.session.opened",
                "source": "/soak-probe",
                "id": f"probe-{k}-{self.probe_sessions[k]}",
                "data": {"target": f"soak/probe-{k}", "session": f"p{self.probe_sessions[k]}"},
            }
            deadline = time.monotonic() + 60
            while True:
                for replica in list(self.replicas.values()):
                    try:
                        async with http.post(
                            f"http://127.0.0.1:{replica['port']}/events",
                            json=event,
                            headers={"Content-Type": "application/cloudevents+json"},
                        ) as response:
                            if response.status == 202:
                                break
                    except Exception:  # a replica that is gone: try the other
                        continue
                else:
                    if time.monotonic() > deadline:
                        raise RuntimeError("a probe event was never acknowledged")
                    await asyncio.sleep(0.02)
                    continue
                break

    async def probes_converged(self, client: Any) -> bool:
        raw = await client.mget([f"prewarm:{{soak/probe-{k}}}:decision" for k in range(PROBES)])
        floors = [None if value is None else json.loads(value)["floor"] for value in raw]
        return floors == self.probe_sessions

    async def wait(self, predicate: Any, within: float) -> float | None:
        """Poll every 10 ms; the seconds it took, or None when it never held."""
        start = time.monotonic()
        while time.monotonic() - start < within:
            try:
                if await predicate():
                    return time.monotonic() - start
            except Exception:
                pass
            await asyncio.sleep(0.01)
        return None

    async def restart_redis(self, client: Any, http: Any) -> None:
        assert self.redis is not None
        at = self.elapsed()
        start = time.monotonic()
        self.redis.send_signal(signal.SIGTERM)  # graceful: the append-only file is flushed
        self.redis.wait(timeout=120)
        self.start_redis()

        async def answers() -> bool:
            return bool(await client.ping())

        await self.wait(answers, within=120)  # ping fails with LOADING until the file is read
        back = time.monotonic()
        await self.probe(http)
        converged = await self.wait(lambda: self.probes_converged(client), within=60)
        self.faults.append(
            {
                "fault": "redis restart",
                "at_s": round(at, 1),
                "downtime_s": round(back - start, 3),
                "converged_after_end_s": None if converged is None else round(time.monotonic() - back, 3),
                "converged_after_start_s": None if converged is None else round(time.monotonic() - start, 3),
            }
        )

    async def kill_decider(self, client: Any, http: Any) -> None:
        holders = await self.lease_holders(client)
        victim = max(self.replicas, key=holders.count)
        survivor = next(name for name in self.replicas if name != victim)
        at = self.elapsed()
        start = time.monotonic()
        self.replicas[victim]["process"].send_signal(signal.SIGKILL)
        self.replicas[victim]["process"].wait(timeout=30)
        await self.probe(http)

        async def taken_over() -> bool:
            return set(await self.lease_holders(client)) == {survivor}

        takeover = await self.wait(taken_over, within=self.args.lease * 3 + 10)
        taken = time.monotonic()
        converged = await self.wait(lambda: self.probes_converged(client), within=60)
        done = time.monotonic()
        self.faults.append(
            {
                "fault": f"kill -9 of {victim} (held {holders.count(victim)} of {len(holders)} leases)",
                "at_s": round(at, 1),
                "takeover_s": None if takeover is None else round(takeover, 3),
                "converged_after_end_s": None if converged is None else round(done - taken, 3),
                "converged_after_start_s": None if converged is None else round(done - start, 3),
            }
        )
        self.start_replica(victim, self.replicas[victim]["port"])  # back to two, as a Deployment would

    def stop(self) -> None:
        for replica in self.replicas.values():
            process = replica["process"]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            self.redis.wait(timeout=120)


async def verify(url: str, acked: bytes, targets: int) -> dict[str, Any]:
    """Every acknowledged event's dedup key must be in Redis (they live 24 h)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    lost: list[int] = []
    try:
        seqs = [seq for seq, flag in enumerate(acked) if flag]
        for i in range(0, len(seqs), 5000):
            chunk = seqs[i : i + 5000]
            async with client.pipeline(transaction=False) as pipe:
                for seq in chunk:
                    pipe.exists(dedup_key(load_target(seq, targets)[1], f"e{seq}"))
                found = await pipe.execute()
            lost += [seq for seq, present in zip(chunk, found, strict=True) if not present]
    finally:
        await client.aclose()
    return {"checked": len(seqs), "lost": len(lost), "lost_examples": lost[:20]}


async def soak(args: argparse.Namespace, soak_run: Soak, result_path: str) -> None:
    """Run the load with its faults; the load's own results land in `result_path`."""
    import aiohttp
    import redis.asyncio as aioredis

    seconds = args.minutes * 60
    soak_run.start_redis()
    for name in ("replica-a", "replica-b"):
        soak_run.start_replica(name)
    client = aioredis.Redis.from_url(soak_run.redis_url, socket_timeout=2)
    async with aiohttp.ClientSession() as http:
        assert await soak_run.wait(lambda: _all_held(soak_run, client), within=60) is not None, "no leases"
        ports = [replica["port"] for replica in soak_run.replicas.values()]
        loader = multiprocessing.get_context("spawn").Process(
            target=run_load,
            args=(ports, args.rate, seconds, args.targets, args.window_minutes * 60, result_path),
        )
        loader.start()
        soak_run.began = time.monotonic()
        plan = [(seconds * args.redis_restart_at, "redis"), (seconds * args.kill_at, "kill")]
        next_sample = 0.0
        while loader.is_alive():
            now = soak_run.elapsed()
            if now >= next_sample:
                soak_run.sample_rss()
                next_sample = now + args.rss_every
            if plan and now >= plan[0][0]:
                _, fault = plan.pop(0)
                if fault == "redis":
                    await soak_run.restart_redis(client, http)
                else:
                    await soak_run.kill_decider(client, http)
                print(f"[{soak_run.elapsed():7.1f} s] {soak_run.faults[-1]}", flush=True)
            await asyncio.sleep(0.2)
        soak_run.sample_rss()
        loader.join()
    await client.aclose()


async def _all_held(soak_run: Soak, client: Any) -> bool:
    return "" not in await soak_run.lease_holders(client)


def rss_summary(replica: dict[str, Any], settle_s: float) -> dict[str, Any]:
    """Per process of the replica: RSS once settled (5 min after its start), at its end, the growth."""
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for at, kb, pid in replica["rss"]:
        by_pid.setdefault(pid, []).append((at, kb))
    out = []
    for pid, series in by_pid.items():
        start = series[0][0]
        settled = [kb for at, kb in series if at >= start + settle_s]
        row: dict[str, Any] = {"pid": pid, "from_s": start, "to_s": series[-1][0], "first_mib": series[0][1] / 1024}
        if settled:
            row |= {
                "settled_mib": settled[0] / 1024,
                "end_mib": settled[-1] / 1024,
                "max_mib": max(settled) / 1024,
                "growth_pct": 100 * (settled[-1] - settled[0]) / settled[0],
            }
        out.append(row)
    return {"processes": out, "series": replica["rss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--lease", type=float, default=10.0, help="--decider-lease of the replicas, seconds")
    parser.add_argument("--window-minutes", type=float, default=5.0, help="latency windows")
    parser.add_argument("--settle-minutes", type=float, default=5.0, help="RSS growth is measured after this")
    parser.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--redis-restart-at", type=float, default=0.35, help="fraction of the run")
    parser.add_argument("--kill-at", type=float, default=0.65, help="fraction of the run")
    parser.add_argument("--out", type=Path, default=Path("bench/out/soak.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="prewarm-soak-"))
    soak_run = Soak(args, workdir)
    result_path = str(workdir / "load.json")
    try:
        asyncio.run(soak(args, soak_run, result_path))
        load = json.loads(Path(result_path).read_text())
        check = asyncio.run(verify(soak_run.redis_url, Path(result_path + ".acked").read_bytes(), args.targets))
    finally:
        soak_run.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rss = {name: rss_summary(replica, args.settle_minutes * 60) for name, replica in soak_run.replicas.items()}
    convergence = [f.get("converged_after_end_s") for f in soak_run.faults]
    growths = [p["growth_pct"] for r in rss.values() for p in r["processes"] if "growth_pct" in p]
    p99s = [w["p99_ms"] for w in load["windows"] if w["p99_ms"] is not None]
    result = {
        "benchmark": "soak",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "minutes": args.minutes,
        "rate": args.rate,
        "targets": args.targets,
        "lease_s": args.lease,
        "load": load,
        "loss_check": check,
        "faults": soak_run.faults,
        "rss": rss,
        "aims": {
            "acknowledged_lost": {"aim": 0, "measured": check["lost"], "met": check["lost"] == 0},
            "convergence_s": {
                "aim": 2.0,
                "measured": convergence,
                "met": all(c is not None and c <= 2.0 for c in convergence),
            },
            "rss_growth_pct": {"aim": 5.0, "measured": growths, "met": all(g <= 5.0 for g in growths)},
            "p99_ms_per_window": p99s,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"soak: {args.minutes:g} min at {args.rate:g} events/s, {args.targets} targets (+{PROBES} probes), ", end="")
    print(f"2 replicas, --decider-lease {args.lease:g}")
    print(
        f"events: {load['sent']} sent, {load['acknowledged']} acknowledged, {check['lost']} acknowledged and lost, "
        f"{load['never_acknowledged']} never acknowledged, {load['retries']} retries, "
        f"{load['lagged_ticks']} pacing ticks lagged ({load['elapsed_s']:.0f} s)"
    )
    print(f"\n{'fault':<44}{'at s':>8}{'down/takeover s':>17}{'converged s':>13}{'from start s':>14}")
    for f in soak_run.faults:
        outage = f.get("downtime_s", f.get("takeover_s"))
        print(
            f"{f['fault']:<44}{f['at_s']:>8.1f}{outage if outage is not None else 'never':>17}"
            f"{f['converged_after_end_s'] if f['converged_after_end_s'] is not None else 'never':>13}"
            f"{f['converged_after_start_s'] if f['converged_after_start_s'] is not None else 'never':>14}"
        )
    print(f"\n{'window':<10}{'sent':>9}{'202':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses (per try)")
    for w in load["windows"]:
        start = w["window"] * args.window_minutes
        label = f"{start:g}-{start + args.window_minutes:g}m"
        p50 = f"{w['p50_ms']:.2f}" if w["p50_ms"] is not None else "-"
        p99 = f"{w['p99_ms']:.2f}" if w["p99_ms"] is not None else "-"
        top = f"{w['max_ms']:.0f}" if w["max_ms"] is not None else "-"
        print(f"{label:<10}{w['sent']:>9}{w['accepted']:>9}{p50:>9}{p99:>9}{top:>9}  {w['statuses']}")
    print(f"\n{'replica (pid)':<24}{'from s':>8}{'to s':>8}{'start MiB':>11}{'settled':>9}{'end':>9}{'growth':>9}")
    for name, summary in rss.items():
        for p in summary["processes"]:
            settled = f"{p['settled_mib']:.1f}" if "settled_mib" in p else "-"
            end = f"{p['end_mib']:.1f}" if "end_mib" in p else "-"
            growth = f"{p['growth_pct']:+.1f}%" if "growth_pct" in p else "n/a"
            print(
                f"{name + ' (' + str(p['pid']) + ')':<24}{p['from_s']:>8.0f}{p['to_s']:>8.0f}"
                f"{p['first_mib']:>11.1f}{settled:>9}{end:>9}{growth:>9}"
            )
    print()
    for aim, value in result["aims"].items():
        if isinstance(value, dict):
            print(f"{aim}: aim {value['aim']}, measured {value['measured']}, {'met' if value['met'] else 'NOT met'}")
    print(f"p99 per window (ms): {', '.join(f'{p:.1f}' for p in p99s)}; median {statistics.median(p99s):.1f}")
    print(f"wrote {args.out}")
    return 0 if check["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
