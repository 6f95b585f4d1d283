"""Semi-warm cache: key, environment, manifest under races, leases, gc, stats, exec. No torch needed."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prewarm.cache import entries, runtime

BASE = runtime.RuntimeFacts(
    model="llm/chat-8b",
    python="3.11.7",
    torch="2.13.0",
    triton=None,
    vllm=None,
    cuda_runtime=None,
    device="cpu",
    compute_capability=None,
    cpu_threads=8,
)


@pytest.mark.parametrize(
    "change",
    [
        {"salt": "v2"},
        {"cpu_threads": 4},
        {"torch": "2.12.1"},
        {"model": "llm/chat-70b"},
        {"python": "3.12.1"},
        {"device": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "cpu_threads": None, "cuda_runtime": "12.8"},
        {"vllm": "0.11.0"},
    ],
    ids=["salt", "threads", "torch-version", "model", "python", "gpu", "vllm"],
)
def test_every_fact_changes_the_key(change: dict[str, object]) -> None:
    changed = dataclasses.replace(BASE, **change)  # type: ignore[arg-type]
    assert runtime.runtime_key(changed) != runtime.runtime_key(BASE)


def test_key_is_stable_and_readable() -> None:
    key = runtime.runtime_key(BASE)
    assert key == runtime.runtime_key(dataclasses.replace(BASE))
    assert key.startswith("llm-chat-8b-") and len(key) == len("llm-chat-8b-") + 16


def test_cpu_threads_follow_omp_num_threads() -> None:
    assert runtime.cpu_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert runtime.cpu_threads({}) == len(os.sched_getaffinity(0))
    facts = runtime.probe_runtime(model="m", salt="s", env={"OMP_NUM_THREADS": "5"})
    assert (facts.model, facts.salt, facts.cpu_threads, facts.device) == ("m", "s", 5, "cpu")


def test_cache_environment_points_every_cache_into_the_entry(tmp_path: Path) -> None:
    env = runtime.cache_environment(tmp_path / "k")
    assert env == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "k" / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "k" / "triton"),
        "VLLM_CACHE_ROOT": str(tmp_path / "k" / "vllm"),
        "CUDA_CACHE_PATH": str(tmp_path / "k" / "cuda"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        "CUDA_CACHE_MAXSIZE": str(4 * 1024**3),
        "PREWARM_CACHE_ENTRY": str(tmp_path / "k"),
    }


def test_per_pod_vllm_variables_are_flagged() -> None:
    env = {
        "POD_IP": "10.1.2.3",
        "VLLM_HOST_IP": "10.1.2.3",
        "VLLM_USE_V1": "1",
        "HOSTNAME": "chat-abc12",
        "VLLM_RPC_BASE_PATH": "/tmp/chat-abc12",
    }
    assert runtime.per_pod_vllm_variables(env) == ["VLLM_HOST_IP", "VLLM_RPC_BASE_PATH"]


def test_releasing_an_entry_gc_evicted_does_not_bring_back_an_empty_one(tmp_path: Path) -> None:
    """A watcher whose lease ran out (a stalled node) releases after gc evicted the entry: the
    release must not recreate the folder with a manifest, a ghost entry that later starts lease."""
    entry, _ = entries.open_entry(tmp_path, BASE, now=100.0)
    (entry / "inductor" / "graph.so").write_bytes(b"x" * 1000)
    entries.write_lease(entry, host="h", pid=1, now=100.0)
    assert entries.collect_garbage(tmp_path, max_bytes=0, now=100.0 + entries.LEASE_TTL + 1) == [entry.name]
    entries.release(entry, host="h", pid=1, now=400.0)
    assert not entry.exists()
    assert entries.list_entries(tmp_path) == []


def test_first_start_misses_and_a_filled_entry_hits(tmp_path: Path) -> None:
    entry, hit = entries.open_entry(tmp_path, BASE, now=100.0)
    assert hit is False
    (entry / "inductor" / "graph.so").write_bytes(b"x" * 1000)
    entries.release(entry, host="h", pid=1, now=150.0)
    again, hit = entries.open_entry(tmp_path, BASE, now=200.0)
    assert (again, hit) == (entry, True)
    manifest = entries.read_manifest(entry)
    assert manifest is not None
    assert {k: manifest[k] for k in ("bytes", "created", "last_used", "hits", "misses")} == {
        "bytes": 1000,
        "created": 100.0,
        "last_used": 200.0,
        "hits": 1,
        "misses": 1,
    }
    assert manifest["inputs"] == dataclasses.asdict(BASE)
    assert entries.open_entry(tmp_path, dataclasses.replace(BASE, salt="other"), now=300.0)[1] is False


def _race(root: str, start: object, rounds: int) -> None:
    start.wait()  # type: ignore[attr-defined]
    for i in range(rounds):
        entry, _ = entries.open_entry(Path(root), BASE, now=float(i))
        entries.write_lease(entry, host="h", pid=os.getpid(), now=float(i))
        entries.release(entry, host="h", pid=os.getpid(), now=float(i))


def test_processes_racing_to_publish_never_lose_a_count_or_tear_the_manifest(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    workers = [context.Process(target=_race, args=(str(tmp_path), start, 50)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    entry = tmp_path / runtime.runtime_key(BASE)
    manifest = json.loads((entry / entries.MANIFEST).read_text())
    assert manifest["hits"] + manifest["misses"] == 200
    assert not list(entry.glob(".manifest-*"))  # no temp file left behind
    assert not list((entry / entries.LEASES).glob("*.json"))


def _filled(root: Path, model: str, size: int, last_used: float) -> Path:
    entry, _ = entries.open_entry(root, dataclasses.replace(BASE, model=model), now=last_used)
    (entry / "triton" / "kernel.bin").write_bytes(b"k" * size)
    return entry


def test_gc_evicts_least_recently_used_entries_without_live_leases(tmp_path: Path) -> None:
    old = _filled(tmp_path, "old", 4000, last_used=10.0)
    in_use = _filled(tmp_path, "busy", 4000, last_used=20.0)
    recent = _filled(tmp_path, "recent", 4000, last_used=30.0)
    entries.write_lease(in_use, host="node-a", pid=123, now=1000.0)
    evicted = entries.collect_garbage(tmp_path, max_bytes=9000, now=1000.0 + entries.LEASE_TTL - 1)
    assert evicted == [old.name]  # one eviction brings 12,000 bytes under 9,000
    assert not old.exists() and in_use.exists() and recent.exists()
    evicted = entries.collect_garbage(tmp_path, max_bytes=5000, now=1000.0 + entries.LEASE_TTL - 1)
    assert evicted == [recent.name]  # busy is older than recent, but leased: it stays
    assert not recent.exists() and in_use.exists()
    # once the lease is stale (a dead node), the entry may go
    evicted = entries.collect_garbage(tmp_path, max_bytes=0, now=1000.0 + entries.LEASE_TTL + 1)
    assert evicted == [in_use.name]
    assert entries.collect_garbage(tmp_path, max_bytes=0, now=2000.0) == []


def test_stats(tmp_path: Path) -> None:
    entry = _filled(tmp_path, "a", 100, last_used=1.0)
    entries.open_entry(tmp_path, dataclasses.replace(BASE, model="a"), now=2.0)
    entries.write_lease(entry, host="h", pid=1, now=2.0)
    stats = entries.cache_stats(tmp_path, now=3.0)
    assert {k: stats[k] for k in ("entries", "bytes", "hits", "misses", "in_use")} == {
        "entries": 1,
        "bytes": 100,
        "hits": 1,
        "misses": 1,
        "in_use": 1,
    }


def prewarm(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "prewarm.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def poll(predicate: object, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.01)


CHILD = """
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("TERM", flush=True), sys.exit(0)))
print(json.dumps({"pid": os.getpid(), "inductor": os.environ["TORCHINDUCTOR_CACHE_DIR"],
                  "model": os.environ.get("PREWARM_MODEL")}), flush=True)
for _ in range(600):
    time.sleep(0.1)
"""


def test_exec_keeps_the_pid_passes_signals_and_holds_a_lease(tmp_path: Path) -> None:
    env = {**os.environ, "PREWARM_MODEL": "llm/chat-8b", "OMP_NUM_THREADS": "2"}
    process = prewarm("cache", "exec", "--root", str(tmp_path), "--", sys.executable, "-c", CHILD, env=env)
    assert process.stdout is not None
    started = json.loads(process.stdout.readline())
    assert started["pid"] == process.pid  # exec, not a child: same PID
    entry = Path(started["inductor"]).parent
    assert entry.parent == tmp_path and entry.name.startswith("llm-chat-8b-")
    lease = entries.lease_path(entry, socket.gethostname(), process.pid)
    poll(lease.exists)
    process.send_signal(signal.SIGTERM)
    assert process.stdout.readline().strip() == "TERM"
    assert process.wait(10) == 0
    poll(lambda: not lease.exists())  # the watcher saw the process end and released the entry
    assert "prewarm cache: miss" in (process.stderr.read() if process.stderr else "")


def test_exec_without_a_command_or_model_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREWARM_MODEL"}
    process = prewarm("cache", "exec", "--root", str(tmp_path), "--", "true", env=env)
    assert process.wait(20) == 2
    assert "needs --model" in (process.stderr.read() if process.stderr else "")


def test_cli_gc_and_stats(tmp_path: Path) -> None:
    _filled(tmp_path, "a", 2_000_000, last_used=1.0)
    stats = prewarm("cache", "stats", "--root", str(tmp_path))
    out, _ = stats.communicate(timeout=20)
    assert json.loads(out)["bytes"] == 2_000_000
    gc = prewarm("cache", "gc", "--root", str(tmp_path), "--max-bytes", "1M")
    out, _ = gc.communicate(timeout=20)
    assert len(json.loads(out)["evicted"]) == 1


@pytest.mark.parametrize("verb", ["gc", "stats"])
def test_cli_gc_and_stats_refuse_a_root_that_is_not_a_folder(tmp_path: Path, verb: str) -> None:
    """A mistyped --root is an error, not an empty cache with nothing to evict."""
    missing = tmp_path / "no-such-volume"
    process = prewarm("cache", verb, "--root", str(missing), *(["--max-bytes", "1M"] if verb == "gc" else []))
    out, err = process.communicate(timeout=20)
    assert process.returncode == 2 and out == ""
    assert err == f"prewarm cache {verb}: --root {missing}: not a folder\n"


def test_inductor_precompiled_headers_are_linked_into_the_entry(tmp_path: Path) -> None:
    env = {"TMPDIR": str(tmp_path / "tmp")}
    entry, _ = entries.open_entry(tmp_path / "root", BASE, now=1.0)
    link = runtime.link_header_dir(entry, env)
    assert link == runtime.inductor_header_dir(env)
    assert link is not None and link.parent.name.startswith("torchinductor_")
    assert link.resolve() == (entry / "inductor-headers").resolve()
    assert runtime.link_header_dir(entry, env) == link  # idempotent
    other, _ = entries.open_entry(tmp_path / "root", dataclasses.replace(BASE, salt="x"), now=2.0)
    assert runtime.link_header_dir(other, env) == link and link.resolve() == (other / "inductor-headers").resolve()
    link.unlink()
    link.mkdir()  # a real folder (made by torch before us) is left alone
    assert runtime.link_header_dir(entry, env) is None
