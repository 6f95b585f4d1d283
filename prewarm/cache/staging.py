"""`prewarm cache stage`: put one revision of a model on the volume's `weights/` tier, once.

Under the repository entry's lock (entries.py) a stager checks what is there, copies only what
is missing or damaged, verifies each file's sha256 and publishes blob, snapshot and ref with
renames, so a reader sees a whole file or none, and a stager killed mid-copy leaves only hidden
`.incoming-*` names that the next one removes. Every process that asks while another stages waits
on the lock and then finds it staged (a hit).

The entry's manifest records each blob's size and modification time as verified; a blob whose
size or time changed since is hashed again, and fetched again when it no longer matches. `verify`
hashes every blob, for damage that changes neither.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prewarm.cache import entries, hub_layout, model_source, ranged_copy, s3_source

FILES_IN_FLIGHT = 2  # files copied at once: sha256 runs on one core per file, so two use two cores


class StageError(RuntimeError):
    """The model cannot be staged: a file does not match its sha256, or the source cannot be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class StageResult:
    """What `stage_weights` did."""

    model: str
    revision: str
    revision_id: str
    snapshot: Path
    hit: bool  # everything was there and sound: nothing copied
    staged_bytes: int
    seconds: float
    refetched: tuple[str, ...]  # files whose blob was there but damaged, and was copied again

    @property
    def mb_per_s(self) -> float:
        return self.staged_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "revision": self.revision,
            "revision_id": self.revision_id,
            "snapshot": str(self.snapshot),
            "hit": self.hit,
            "staged_bytes": self.staged_bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "refetched": list(self.refetched),
        }


def repo_entry(root: Path, model: str) -> Path:
    """The model's entry: its hub repository folder under `weights/`."""
    return hub_layout.weights_root(root) / hub_layout.repo_folder(model)


def stage_weights(
    root: Path,
    *,
    model: str,
    revision: str,
    source: Path | str,
    expected: Mapping[str, str] | None = None,
    s3: Any = None,
    verify: bool = False,
    threads: int = ranged_copy.THREADS,
    clock: Callable[[], float] = time.time,
    timer: Callable[[], float] = time.monotonic,
) -> StageResult:
    """Stage `model` at `revision` from `source` under `root`; see the module's doc.

    `source` is a folder, or an `s3://bucket/prefix` URL read with the boto3 client `s3`.
    `expected` maps files to their sha256 (a user's manifest); git-lfs pointers and the store's
    SHA256 checksums give the rest. Raises model_source.SourceError for a bad source and
    StageError for content that does not match.
    """
    for what, value, problem in (
        ("model", model, hub_layout.check_model(model)),
        ("revision", revision, hub_layout.check_revision(revision)),
    ):
        if problem is not None:
            raise StageError(f"{what} {value!r}: {problem}")
    started = timer()
    listing = list_model(source, s3=s3, expected=expected)
    if hub_layout.is_commit(revision) and listing.commit is not None and listing.commit != revision:
        raise StageError(f"revision {revision!r}: the source {source} is a checkout of {listing.commit}")
    entry = repo_entry(root, model)
    with entries.locked(entry):
        manifest = entries.read_manifest(entry) or _new_manifest(entry, model, now=clock())
        for sub in (hub_layout.BLOBS, hub_layout.SNAPSHOTS, hub_layout.REFS, entries.LEASES):
            (entry / sub).mkdir(exist_ok=True)
        hub_layout.remove_incoming(entry)
        blobs: dict[str, dict[str, int]] = manifest.setdefault("blobs", {})
        revisions: dict[str, dict[str, Any]] = manifest.setdefault("revisions", {})
        known = _known_files(entry, revision, listing, revisions)
        staged = 0
        refetched: list[str] = []
        files: dict[str, str] = {}
        copies: list[tuple[model_source.SourceFile, concurrent.futures.Future[tuple[str, dict[str, int]]]]] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=FILES_IN_FLIGHT) as pool:
            for item in listing.files:  # in staging order: the pool starts the first-needed files first
                want = item.sha256 or known.get(item.name)
                if want is not None and _blob_sound(entry, want, blobs, verify=verify):
                    files[item.name] = want
                    continue
                if want is not None and hub_layout.blob_path(entry, want).exists():
                    refetched.append(item.name)
                copies.append((item, pool.submit(_copy_blob, entry, item, want, threads=threads, s3=s3)))
                staged += item.size
            for item, copy in copies:
                sha256, stat = copy.result()
                files[item.name] = sha256
                blobs[sha256] = stat
        files = {item.name: files[item.name] for item in listing.files}
        revision_id = listing.commit if listing.commit is not None else _revision_id(revision, files)
        snapshot = hub_layout.publish_snapshot(entry, revision_id, files)
        hub_layout.write_ref(entry, revision, revision_id)
        hit = staged == 0
        now = clock()
        revisions[revision_id] = {
            "files": files,
            "sources": {item.name: model_source.fingerprint(item) for item in listing.files},
            "staged_at": now,
        }
        manifest.setdefault("names", {})[revision] = revision_id
        manifest["hits" if hit else "misses"] = int(manifest.get("hits" if hit else "misses", 0)) + 1
        manifest["last_used"] = now
        manifest["bytes"] = sum(int(b["size"]) for b in blobs.values())
        entries.write_manifest(entry, manifest)
    return StageResult(
        model=model,
        revision=revision,
        revision_id=revision_id,
        snapshot=snapshot,
        hit=hit,
        staged_bytes=staged,
        seconds=timer() - started,
        refetched=tuple(refetched),
    )


def list_model(
    source: Path | str, *, s3: Any = None, expected: Mapping[str, str] | None = None
) -> model_source.SourceListing:
    """The model's files at `source` (a folder, or an `s3://` URL read with the boto3 client `s3`)."""
    if isinstance(source, str) and s3_source.is_s3(source):
        if s3 is None:
            raise StageError(f"{source}: an S3 source needs an S3 client")
        return s3_source.list_s3_source(s3, source, expected=expected)
    return model_source.list_source(Path(source), expected=expected)


def _new_manifest(entry: Path, model: str, *, now: float) -> dict[str, Any]:
    return {
        "key": entry.name,
        "kind": "weights",
        "model": model,
        "bytes": 0,
        "created": now,
        "last_used": now,
        "hits": 0,
        "misses": 0,
    }


def _known_files(
    entry: Path, revision: str, listing: model_source.SourceListing, revisions: Mapping[str, Any]
) -> dict[str, str]:
    """The sha256 of each file staged before for this revision from the same source file (same
    path, size and modification time), so an unchanged file is not read again."""
    staged = revisions.get(listing.commit or hub_layout.read_ref(entry, revision) or "")
    if not isinstance(staged, dict) or not isinstance(staged.get("sources"), dict):
        return {}
    files, sources = staged.get("files", {}), staged["sources"]
    return {
        item.name: str(files[item.name])
        for item in listing.files
        if item.name in files and sources.get(item.name) == model_source.fingerprint(item)
    }


def _revision_id(revision: str, files: Mapping[str, str]) -> str:
    return revision if hub_layout.is_commit(revision) else hub_layout.content_revision(files)


def _blob_sound(entry: Path, sha256: str, blobs: dict[str, dict[str, int]], *, verify: bool) -> bool:
    """The blob is there and whole: same size and time as when verified, or hashed again to match."""
    path = hub_layout.blob_path(entry, sha256)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    recorded = blobs.get(sha256)
    unchanged = recorded is not None and (stat.st_size, stat.st_mtime_ns) == (recorded["size"], recorded["mtime_ns"])
    if unchanged and not verify:
        return True
    if ranged_copy.hash_file(path) != sha256:
        return False
    blobs[sha256] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return True


def _copy_blob(
    entry: Path, item: model_source.SourceFile, want: str | None, *, threads: int, s3: Any
) -> tuple[str, dict[str, int]]:
    """Copy one file into a hidden temp file, check its sha256, and rename it to its blob name.
    Returns the sha256 and what the manifest records of the blob (size, modification time)."""
    fd, temp = tempfile.mkstemp(prefix=hub_layout.INCOMING, dir=entry / hub_layout.BLOBS)
    try:
        try:
            if item.url is not None:
                read = s3_source.range_reader(s3, item.url)
                got = ranged_copy.fetch_and_hash(read, fd, size=item.size, threads=threads)
            else:
                assert item.path is not None
                got = ranged_copy.copy_and_hash(item.path, fd, size=item.size, threads=threads)
        except OSError as e:
            raise StageError(f"{item.location}: cannot copy: {e}") from e
        finally:
            os.close(fd)
        if want is not None and got != want:
            raise StageError(f"{item.name}: sha256 {got} read from {item.location}, expected {want}")
        os.chmod(temp, 0o444)
        final = hub_layout.blob_path(entry, got)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    stat = final.stat()
    return got, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
