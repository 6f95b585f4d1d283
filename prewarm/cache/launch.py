"""`prewarm cache exec`: point the compile caches at this runtime's entry and exec the model server
in the same process, reporting the pod's start phases as CloudEvents on the way.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from prewarm.cache import entries, hub_layout, runtime


def report_phase(phase: str, *, env: Mapping[str, str], at: float, detail: Mapping[str, str] | None = None) -> None:
    """POST a dev.prewarm.pod.phase event when PREWARM_EVENTS_URL and PREWARM_TARGET are set.

    Waits at most a second and only reports failures on stderr: a pod start never waits on it.
    """
    url, target = env.get("PREWARM_EVENTS_URL"), env.get("PREWARM_TARGET")
    if not url or not target:
        return
    import urllib.error
    import urllib.request
    from datetime import UTC, datetime

    pod = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    event = {
        "specversion": "1.0",
        "type": "dev.prewarm.pod.phase",
        "source": "prewarm-cache-exec",
        "id": f"{pod}-{os.getpid()}-{phase}-{at:.6f}",
        "time": datetime.fromtimestamp(at, UTC).isoformat(),
        "data": {"target": target, "pod": pod, "phase": phase, **(detail or {})},
    }
    headers = {"Content-Type": "application/cloudevents+json"}
    if env.get("PREWARM_TOKEN"):
        headers["Authorization"] = f"Bearer {env['PREWARM_TOKEN']}"
    request = urllib.request.Request(url, data=json.dumps(event).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"prewarm cache: could not report {phase} to {url}: {e}", file=sys.stderr)


# --- exec ---


def exec_with_cache(command: Sequence[str], *, root: Path, model: str, salt: str, env: Mapping[str, str]) -> None:
    """Point the caches at this runtime's entry, start the lease watcher, and exec `command` in
    this process (same PID, so signals reach the model server directly). Does not return."""
    if not command:
        raise ValueError("no command to run after --")
    report_phase("container_started", env=env, at=time.time())
    facts = runtime.probe_runtime(model=model, salt=salt, env=env)
    entry, hit = entries.open_entry(root, facts, now=time.time())
    report_phase("cache_restored", env=env, at=time.time(), detail={"cache": "hit" if hit else "miss"})
    for name in runtime.per_pod_vllm_variables(env):
        print(
            f"prewarm cache: {name} holds a per-pod value; vLLM hashes it into its cache key, "
            "so pods will not share compiled artifacts",
            file=sys.stderr,
        )
    if runtime.link_header_dir(entry, env) is None:
        print(
            f"prewarm cache: {runtime.inductor_header_dir(env)} exists; Inductor's precompiled headers stay per pod",
            file=sys.stderr,
        )
    print(f"prewarm cache: {'hit' if hit else 'miss'} {entry}", file=sys.stderr)
    pid = os.getpid()
    host = socket.gethostname()
    entries.write_lease(entry, host=host, pid=pid, now=time.time())
    weights = _lease_weights(root, env, host=host, pid=pid)
    if os.fork() == 0:  # the watcher: detached, so it outlives neither more nor less than it must
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            try:
                entries.watch_process(entry, host=host, pid=pid, also=weights)
            finally:
                os._exit(0)
        os._exit(0)
    os.wait()  # reap the intermediate child; the watcher is re-parented
    os.execvpe(command[0], list(command), {**env, **runtime.cache_environment(entry)})


def _lease_weights(root: Path, env: Mapping[str, str], *, host: str, pid: int) -> tuple[Path, ...]:
    """Lease the weights of the model PREWARM_WEIGHTS_MODEL names (set by `prewarm inject`) while
    the model server runs, so gc never evicts them from under it; () when none is staged here."""
    model = env.get("PREWARM_WEIGHTS_MODEL", "").strip()
    if not model or hub_layout.check_model(model) is not None:
        return ()
    repo = hub_layout.weights_root(root) / hub_layout.repo_folder(model)
    if entries.read_manifest(repo) is not None:

        def waiting() -> None:
            print(f"prewarm cache: waiting while the weights of {model} are staged or collected", file=sys.stderr)

        # gc checks leases and evicts under this lock, so the lease lands before or after, never
        # between; a stager holds it while it copies a new revision (then the server reads that one).
        with entries.locked(repo, on_wait=waiting):
            if entries.read_manifest(repo) is not None:  # not evicted while we waited
                entries.write_lease(repo, host=host, pid=pid, now=time.time())
                return (repo,)
    print(f"prewarm cache: weights of {model} are not staged on this node", file=sys.stderr)
    return ()
