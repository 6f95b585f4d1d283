"""The weights tier: staged once by racing processes, verified, crash-safe, read by huggingface_hub
and safetensors through HF_HUB_CACHE, and never collected while a model server uses it. Real files
(a generated ~200 MB safetensors model) and real processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import file_download
from model_files import write_model
from support import wait_until

from prewarm.cache import entries, hub_layout, model_source, ranged_copy, staging

MODEL = "acme/tiny-llm"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~200 MB two-shard model, written once for the module (tests never change it)."""
    folder = tmp_path_factory.mktemp("store") / "acme" / "tiny-llm"
    write_model(folder, shards=2, shard_bytes=100 * 1024**2)
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    volume = tmp_path / "volume"
    volume.mkdir()
    yield volume
    shutil.rmtree(volume, ignore_errors=True)  # read-only blobs: free the disk at once


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stage_command(root: Path, source: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prewarm.cli",
        "cache",
        "stage",
        MODEL,
        "--revision",
        "main",
        "--source",
        str(source),
        "--root",
        str(root),
        *extra,
    ]


def _visible_files(repo: Path) -> list[Path]:
    """What a hub reader can reach: blobs and snapshot links, hidden temp names excluded."""
    found = []
    for folder in (repo / "blobs", repo / "snapshots", repo / "refs"):
        if folder.is_dir():
            found += [p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.parts[-3:])]
    return found


@pytest.mark.parametrize(
    "model", ["acme/tiny-llm", "gpt2", "Org.Name/model_v1.5-chat"], ids=["org-name", "no-org", "dots-underscores"]
)
def test_repo_folder_is_huggingface_hub_s(model: str) -> None:
    assert hub_layout.repo_folder(model) == file_download.repo_folder_name(repo_id=model, repo_type="model")


def test_eight_processes_stage_the_model_once(root: Path, source: Path) -> None:
    processes = [
        subprocess.Popen(_stage_command(root, source), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=100)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    staged = [r for r in results if not r["hit"]]
    assert len(staged) == 1
    total = sum(p.stat().st_size for p in source.iterdir())
    assert staged[0]["staged_bytes"] == total
    assert all(r["staged_bytes"] == 0 for r in results if r["hit"])
    assert len({r["revision_id"] for r in results}) == 1
    repo = staging.repo_entry(root, MODEL)
    manifest = entries.read_manifest(repo)
    assert manifest is not None and (manifest["misses"], manifest["hits"]) == (1, 7)
    blobs = sorted(p.name for p in (repo / "blobs").iterdir())
    assert blobs == sorted(_sha256(p) for p in source.iterdir())  # one blob per file, named by its sha256
    revision_id = results[0]["revision_id"]
    assert (repo / "refs" / "main").read_text() == revision_id
    for file in source.iterdir():
        link = repo / "snapshots" / revision_id / file.name
        assert os.readlink(link) == f"../../blobs/{_sha256(file)}"  # relative, as the hub makes them


def test_staged_model_loads_through_hf_hub_cache(root: Path, source: Path) -> None:
    result = staging.stage_weights(root, model=MODEL, revision="main", source=source)
    script = (
        "import json, hashlib, sys\n"
        "from huggingface_hub import snapshot_download, scan_cache_dir\n"
        "from safetensors.numpy import load_file\n"
        f"path = snapshot_download({MODEL!r}, revision='main')\n"
        "index = json.load(open(path + '/model.safetensors.index.json'))\n"
        "digests = {}\n"
        "for shard in sorted(set(index['weight_map'].values())):\n"
        "    for name, array in load_file(path + '/' + shard).items():\n"
        "        digests[name] = hashlib.sha256(array.tobytes()).hexdigest()\n"
        "info = scan_cache_dir()\n"
        "repo = next(iter(info.repos))\n"
        "print(json.dumps({'path': path, 'digests': digests, 'repo': repo.repo_id, 'size': repo.size_on_disk,\n"
        "                  'revisions': [r.commit_hash for r in repo.revisions], 'warnings': len(info.warnings)}))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub_layout.weights_root(root)), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert loaded["path"] == str(result.snapshot)
    from safetensors.numpy import load_file

    expected = {}
    for shard in SHARDS:
        for name, array in load_file(str(source / shard)).items():
            expected[name] = hashlib.sha256(array.tobytes()).hexdigest()
    assert loaded["digests"] == expected
    assert loaded["repo"] == MODEL and loaded["revisions"] == [result.revision_id]
    assert loaded["size"] == sum(p.stat().st_size for p in source.iterdir())
    assert loaded["warnings"] == 0


def test_a_corrupted_blob_is_detected_and_fetched_again(root: Path, source: Path) -> None:
    first = staging.stage_weights(root, model=MODEL, revision="main", source=source)
    repo = staging.repo_entry(root, MODEL)
    blob = repo / "blobs" / _sha256(source / SHARDS[1])
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as handle:  # a torn write: changes the content and the mtime
        handle.seek(50 * 1024**2)
        handle.write(b"\0" * 4096)
    again = staging.stage_weights(root, model=MODEL, revision="main", source=source)
    assert (again.hit, again.refetched, again.staged_bytes) == (
        False,
        (SHARDS[1],),
        (source / SHARDS[1]).stat().st_size,
    )
    assert _sha256(blob) == _sha256(source / SHARDS[1])
    assert again.revision_id == first.revision_id

    # Damage that keeps size and time is found by --verify, which hashes every blob.
    stat = blob.stat()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as handle:
        handle.write(b"\xff" * 16)
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert staging.stage_weights(root, model=MODEL, revision="main", source=source).hit
    verified = staging.stage_weights(root, model=MODEL, revision="main", source=source, verify=True)
    assert verified.refetched == (SHARDS[1],)
    assert _sha256(blob) == _sha256(source / SHARDS[1])


def test_a_stager_killed_mid_copy_leaves_no_half_file(root: Path, source: Path) -> None:
    repo = staging.repo_entry(root, MODEL)
    process = subprocess.Popen(_stage_command(root, source, "--threads", "1"), stdout=subprocess.DEVNULL)

    def copying_first_shard() -> bool:
        blobs = repo / "blobs"
        return blobs.is_dir() and any(
            p.name.startswith(hub_layout.INCOMING) and p.stat().st_size >= model_source.SMALL for p in blobs.iterdir()
        )

    try:
        wait_until(copying_first_shard, within=60, what="the stager began copying a shard")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (repo / "snapshots").exists() or not any((repo / "snapshots").iterdir())
    assert not (repo / "refs" / "main").exists()
    shard_hashes = {_sha256(source / shard) for shard in SHARDS}
    for path in _visible_files(repo):  # only whole, verified small files may have landed
        assert path.name not in shard_hashes and _sha256(path) == path.name
    result = staging.stage_weights(root, model=MODEL, revision="main", source=source)
    assert not result.hit
    assert not [p for p in (repo / "blobs").iterdir() if p.name.startswith(hub_layout.INCOMING)]
    for shard in SHARDS:
        assert _sha256(result.snapshot / shard) == _sha256(source / shard)


def test_gc_never_evicts_weights_a_model_server_uses(root: Path, source: Path, tmp_path: Path) -> None:
    staging.stage_weights(root, model=MODEL, revision="main", source=source)
    repo = staging.repo_entry(root, MODEL)
    stop = tmp_path / "stop"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prewarm.cli",
            "cache",
            "exec",
            "--root",
            str(root),
            "--model",
            MODEL,
            "--",
            sys.executable,
            "-c",
            f"import os, time\nwhile not os.path.exists({str(stop)!r}): time.sleep(0.01)",
        ],
        env={**os.environ, "PREWARM_WEIGHTS_MODEL": MODEL},
    )
    try:
        wait_until(lambda: any((repo / "leases").glob("*.json")), within=30, what="the model server leased its weights")
        gc = subprocess.run(
            [sys.executable, "-m", "prewarm.cli", "cache", "gc", "--root", str(root), "--max-bytes", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert repo.name not in json.loads(gc.stdout)["evicted"]
        assert (repo / "snapshots").is_dir()
    finally:
        stop.touch()
        server.wait(timeout=30)
    wait_until(lambda: not any((repo / "leases").glob("*.json")), within=30, what="the lease was released")
    evicted = entries.collect_garbage(root, max_bytes=0, now=time.time())
    assert repo.name in evicted and not repo.exists()


def test_a_content_revision_is_stable_and_a_changed_source_is_a_new_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "store" / "m"
    source.mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "weights.bin").write_bytes(b"x" * 1000)
    root = tmp_path / "volume"
    first = staging.stage_weights(root, model="org/m", revision="main", source=source)
    copy = tmp_path / "elsewhere"
    shutil.copytree(source, copy)
    elsewhere = staging.stage_weights(tmp_path / "other-node", model="org/m", revision="main", source=copy)
    assert elsewhere.revision_id == first.revision_id  # the same content has the same id on every node
    (source / "config.json").write_text('{"a": 2}')
    changed = staging.stage_weights(root, model="org/m", revision="main", source=source)
    assert changed.revision_id != first.revision_id and changed.staged_bytes == len('{"a": 2}')
    repo = staging.repo_entry(root, "org/m")
    assert (repo / "refs" / "main").read_text() == changed.revision_id
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == sorted([first.revision_id, changed.revision_id])


def test_git_lfs_pointers_and_commit_ids_come_from_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "clone"
    content = b"weights" * 1000
    digest = hashlib.sha256(content).hexdigest()
    lfs = source / ".git" / "lfs" / "objects" / digest[:2] / digest[2:4]
    lfs.mkdir(parents=True)
    (lfs / digest).write_bytes(content)
    (source / "model.safetensors").write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(content)}\n"
    )
    (source / "config.json").write_text("{}")
    commit = "0123456789abcdef0123456789abcdef01234567"
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (source / ".git" / "packed-refs").write_text(f"# pack-refs\n{commit} refs/heads/main\n")
    result = staging.stage_weights(tmp_path / "volume", model="org/m", revision="main", source=source)
    assert result.revision_id == commit
    assert (result.snapshot / "model.safetensors").read_bytes() == content
    assert result.snapshot == staging.repo_entry(tmp_path / "volume", "org/m") / "snapshots" / commit

    (lfs / digest).write_bytes(b"tampered" * 875)  # same size, other content
    with pytest.raises(
        staging.StageError, match=f"model.safetensors: sha256 [0-9a-f]{{64}} read from .*, expected {digest}"
    ):
        staging.stage_weights(tmp_path / "other", model="org/m", revision="main", source=source)


def test_a_user_manifest_is_checked(tmp_path: Path) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / "a.bin").write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    expected = model_source.parse_sha256_manifest(f"{good}  a.bin\n", origin="SHA256SUMS")
    assert staging.stage_weights(tmp_path / "v", model="m", revision="v1", source=source, expected=expected).snapshot
    wrong = {"a.bin": "0" * 64}
    with pytest.raises(staging.StageError, match=f"a.bin: sha256 {good} read from .*, expected {'0' * 64}"):
        staging.stage_weights(tmp_path / "w", model="m", revision="v1", source=source, expected=wrong)
    with pytest.raises(
        model_source.SourceError, match=re.escape("line 1: 'nonsense' is not '<sha256>  <file>'; b.bin: 'xyz'")
    ):
        model_source.parse_sha256_manifest("nonsense\nxyz  b.bin\n", origin="SHA256SUMS")


def test_shards_are_staged_in_the_order_the_index_names_them(tmp_path: Path) -> None:
    source = tmp_path / "m"
    source.mkdir()
    for name in ("z-first.safetensors", "a-second.safetensors", "extra.bin"):
        with open(source / name, "wb") as handle:
            handle.truncate(model_source.SMALL)
    (source / "config.json").write_text("{}")
    index = {"weight_map": {"embed": "z-first.safetensors", "layer.0": "a-second.safetensors"}}
    (source / model_source.SAFETENSORS_INDEX).write_text(json.dumps(index))
    listing = model_source.list_source(source)
    assert [f.name for f in listing.files] == [
        "config.json",
        model_source.SAFETENSORS_INDEX,
        "z-first.safetensors",
        "a-second.safetensors",
        "extra.bin",
    ]


@pytest.mark.parametrize(
    ("model", "revision", "message"),
    [
        ("../etc", "main", "model '../etc': must be ORG/NAME or NAME"),
        ("a/b/c", "main", "model 'a/b/c': must be ORG/NAME or NAME"),
        ("org/m", "../x", "revision '../x': must be a branch, tag or commit name"),
    ],
    ids=["dotdot-model", "three-parts", "dotdot-revision"],
)
def test_bad_names_are_refused(tmp_path: Path, model: str, revision: str, message: str) -> None:
    with pytest.raises(staging.StageError, match=message.replace("(", r"\(")):
        staging.stage_weights(tmp_path, model=model, revision=revision, source=tmp_path)


def test_huggingface_hub_reads_the_ref(tmp_path: Path) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / "config.json").write_text("{}")
    result = staging.stage_weights(tmp_path / "v", model="org/m", revision="v2", source=source)
    found = huggingface_hub.try_to_load_from_cache(
        "org/m", "config.json", cache_dir=hub_layout.weights_root(tmp_path / "v"), revision="v2"
    )
    assert found == str(result.snapshot / "config.json")


@pytest.mark.parametrize("where", ["same-filesystem", "from-dev-shm"])
def test_ranged_copies_are_whole_and_hashed_across_filesystems(tmp_path: Path, where: str) -> None:
    """copy_file_range within a filesystem; read and write where the kernel refuses it (tmpfs to disk)."""
    if where == "from-dev-shm" and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if where == "from-dev-shm" else tmp_path
    try:
        source = folder / "blob"
        content = os.urandom(3 * 1024**2 + 17)  # ranges of 1 MiB and a short last one
        source.write_bytes(content)
        destination = tmp_path / "copy"
        fd = os.open(destination, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            digest = ranged_copy.copy_and_hash(source, fd, size=len(content), threads=3, chunk=1024**2)
        finally:
            os.close(fd)
        assert digest == hashlib.sha256(content).hexdigest()
        assert destination.read_bytes() == content
        with pytest.raises(OSError, match="short read"):
            fd = os.open(tmp_path / "longer", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                ranged_copy.copy_and_hash(source, fd, size=len(content) + 1024**2, chunk=1024**2)
            finally:
                os.close(fd)
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def test_a_model_server_of_another_user_can_read_the_snapshot_and_the_ref(tmp_path: Path) -> None:
    """The follower runs as its own user; the model server may run as any other, so every folder
    and file a hub reader opens is readable (and folders searchable) by all."""
    source = tmp_path / "m"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "tokenizer.json").write_text("{}")
    result = staging.stage_weights(tmp_path / "v", model="org/m", revision="v2", source=source)
    repo = staging.repo_entry(tmp_path / "v", "org/m")
    for path in (result.snapshot, result.snapshot / "sub", repo / "refs" / "v2"):
        mode = path.stat().st_mode & 0o777
        assert mode & 0o444 == 0o444, f"{path}: mode {mode:o}"
        if path.is_dir():
            assert mode & 0o111 == 0o111, f"{path}: mode {mode:o}"


def _waits_for_lock(lock: Path) -> bool:
    """Whether some process is blocked on the flock of `lock` (a `->` line in /proc/locks)."""
    inode = lock.stat().st_ino
    return any("->" in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_a_starting_model_server_leases_its_weights_under_the_entry_lock(root: Path, tmp_path: Path) -> None:
    """gc checks leases and moves an entry away under its lock: a server starting meanwhile waits,
    then finds its weights gone and starts without them, instead of leasing an entry being evicted."""
    small = tmp_path / "small"
    small.mkdir()
    (small / "config.json").write_text("{}")
    staging.stage_weights(root, model=MODEL, revision="main", source=small)
    repo = staging.repo_entry(root, MODEL)
    moved = repo.with_name(".evicting-test")
    command = [sys.executable, "-m", "prewarm.cli", "cache", "exec", "--root", str(root), "--model", MODEL]
    with entries.locked(repo):
        server = subprocess.Popen(
            [*command, "--", sys.executable, "-c", "pass"],
            env={**os.environ, "PREWARM_WEIGHTS_MODEL": MODEL},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: _waits_for_lock(repo / entries.LOCK) or any((repo / "leases").glob("*.json")),
                within=30,
                what="the server reached the weights' lease",
            )
            assert not entries.live_leases(repo, now=time.time()), "leased while gc held the entry's lock"
            os.replace(repo, moved)  # what gc does, under the lock, when no lease is live
        except BaseException:
            server.kill()
            server.wait()
            raise
    _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    assert f"waiting while the weights of {MODEL} are staged or collected" in stderr
    assert f"weights of {MODEL} are not staged on this node" in stderr
    assert not any((moved / "leases").glob("*.json"))


def test_a_commit_revision_the_checkout_is_not_at_is_refused(tmp_path: Path) -> None:
    """--revision names commit A, the source is a checkout of commit B: staging B's files under a
    ref named A would leave `refs/<A>` that no hub reader follows (a commit id is its own snapshot)."""
    source = tmp_path / "clone"
    (source / ".git").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    at = "0123456789abcdef0123456789abcdef01234567"
    asked = "fedcba9876543210fedcba9876543210fedcba98"
    (source / ".git" / "HEAD").write_text(f"{at}\n")
    with pytest.raises(staging.StageError, match=f"revision {asked!r}: the source {source} is a checkout of {at}"):
        staging.stage_weights(tmp_path / "volume", model="org/m", revision=asked, source=source)
    assert not (staging.repo_entry(tmp_path / "volume", "org/m") / "refs" / asked).exists()
    staged = staging.stage_weights(tmp_path / "volume", model="org/m", revision=at, source=source)
    assert staged.snapshot.name == at


def test_the_hash_is_of_the_bytes_written_not_of_a_second_read_of_the_source(tmp_path: Path) -> None:
    """A source whose content changes between reads (here /dev/urandom; in a model store, a file
    rewritten while it is staged): the sha256 returned, which names the blob, is the copy's."""
    destination = tmp_path / "copy"
    fd = os.open(destination, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        digest = ranged_copy.copy_and_hash(Path("/dev/urandom"), fd, size=3 * 1024**2, threads=2, chunk=1024**2)
    finally:
        os.close(fd)
    assert digest == _sha256(destination)
