"""KEDA targets at scale: `prewarm serve` with many targets on a real Redis (log actuator).

One run, against the same process:

- start: config parsed, then every target decided (its decision in Redis), seconds from the start;
- Redis restart: Redis stopped and started again (append-only file kept); a session is then opened
  on the target the relist reaches last; seconds from its 202 to its floor moving in Redis, while
  the decider re-reads every target after the gap; then seconds from Redis answering again to
  every target re-decided (the relist done: each stored decision newer than the restart);
- stop: seconds from SIGTERM to the process exit; peak RSS (VmHWM) before it.

The baseline in the same run is a tenth of the targets (the same steps), printed as a ratio.

    python bench/keda_scale.py [--targets 50000]

Prints a table and writes JSON (bench/out/keda_scale.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import redis


def _load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


def target_name(index: int) -> str:
    return f"ns{index % 100:02d}/model-{index:05d}"


def write_config(path: Path, targets: int) -> None:
    with path.open("w") as out:
        out.write("targets:\n")
        for index in range(targets):
            out.write(f"  - {{name: {target_name(index)}, kind: keda, max: 4, sessionsPerReplica: 1, hold: 0s}}\n")


# Those of the names (one argument, a name per line) with no stored decision yet, or, when ARGV[2]
# is not empty, with one made before it (an ISO 8601 UTC time with microseconds, as the decisions'
# own `decided_at`, so the strings compare as times). Redis checks them in one script call: the
# client would otherwise encode 50,000 commands per poll on the same cores as the server it
# measures; a stored decision is only decoded when its time is asked about.
UNDECIDED = """
local left = {}
for name in string.gmatch(ARGV[1], '[^\\n]+') do
  local key = 'prewarm:{' .. name .. '}:decision'
  if ARGV[2] == '' then
    if redis.call('EXISTS', key) == 0 then left[#left + 1] = name end
  else
    local raw = redis.call('GET', key)
    if not raw or cjson.decode(raw)['decided_at'] < ARGV[2] then left[#left + 1] = name end
  end
end
return left
"""


def undecided(client: redis.Redis, names: list[str], *, since: datetime | None = None) -> list[str]:
    """Those of `names` with no stored decision yet, or (with `since`) none newer (poll what is left)."""
    if not names:
        return []
    after = "" if since is None else since.isoformat(timespec="microseconds")
    left = client.eval(UNDECIDED, 0, "\n".join(names), after)
    return [name.decode() for name in left]


def floor_of(client: redis.Redis, target: str) -> int | None:
    raw = client.get(f"prewarm:{{{target}}}:decision")
    return None if raw is None else int(json.loads(raw)["floor"])


def post_session(port: int, target: str, session: str) -> int:
    body = json.dumps(
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": "/bench",
            "id": session,
            "data": {"target": target, "session": session},
        }
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/events", data=body, headers={"Content-Type": "application/cloudevents+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(targets: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"targets-{targets}.yaml"
    write_config(config, targets)
    redis_port = harness.free_port()
    store, url = harness.start_redis(workdir, port=redis_port, persistent=True)
    client = redis.Redis(port=redis_port)
    http_port = harness.free_port()
    began = time.monotonic()
    serve = harness.start_serve(config, redis_url=url, http_port=http_port)
    result: dict[str, Any] = {"targets": targets}
    try:
        result["http_up_s"] = time.monotonic() - began
        deadline = began + 600
        waiting = [target_name(index) for index in range(targets)]
        while waiting := undecided(client, waiting):
            if time.monotonic() > deadline:
                raise RuntimeError("not every target was decided within 600 s")
            time.sleep(0.5)
        result["all_decided_s"] = time.monotonic() - began
        # Redis restart: the decider re-reads every target after the gap
        store.send_signal(signal.SIGTERM)
        store.wait(timeout=30)
        store, _ = harness.start_redis(workdir, port=redis_port, persistent=True)
        restarted, restarted_at = time.monotonic(), datetime.now(UTC)
        last = target_name(targets - 1)  # sorted last: the relist reaches it last
        while (status := post_session(http_port, last, "restart-1")) != 202:
            if time.monotonic() > deadline:
                raise RuntimeError(f"events not accepted after the restart (last: {status})")
            time.sleep(0.05)
        accepted = time.monotonic()
        while floor_of(client, last) != 1:
            if time.monotonic() > accepted + 120:
                raise RuntimeError("the floor did not move within 120 s of its 202")
            time.sleep(0.01)
        result["restart_floor_moved_s"] = time.monotonic() - accepted
        waiting = [target_name(index) for index in range(targets)]
        while waiting := undecided(client, waiting, since=restarted_at):
            if time.monotonic() > restarted + 120:
                raise RuntimeError(f"{len(waiting)} targets not re-decided within 120 s of the restart")
            time.sleep(0.25)
        result["relisted_s"] = time.monotonic() - restarted
        result["peak_rss_mb"] = peak_rss_mb(serve.pid)
        stopping = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        result["sigterm_exit_s"] = time.monotonic() - stopping
        result["exit_code"] = serve.returncode
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        store.send_signal(signal.SIGTERM)
        store.wait(timeout=30)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/keda_scale.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keda-scale-") as tmp:
        baseline = run(max(1, args.targets // 10), Path(tmp) / "baseline")
        measured = run(args.targets, Path(tmp) / "measured")
    result = {
        "benchmark": "keda_scale",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "baseline": baseline,
        "measured": measured,
        "ratio_all_decided": measured["all_decided_s"] / baseline["all_decided_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':<34}{baseline['targets']:>12}{measured['targets']:>12}")
    for name, key in (
        ("HTTP up (s)", "http_up_s"),
        ("every target decided (s)", "all_decided_s"),
        ("floor moved after restart (s)", "restart_floor_moved_s"),
        ("relist done after restart (s)", "relisted_s"),
        ("SIGTERM to exit (s)", "sigterm_exit_s"),
        ("peak RSS (MB)", "peak_rss_mb"),
    ):
        print(f"{name:<34}{baseline[key]:>12.2f}{measured[key]:>12.2f}")
    print(f"ratio every-target-decided {measured['targets']}/{baseline['targets']}: {result['ratio_all_decided']:.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
