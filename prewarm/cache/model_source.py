"""What a model's folder in a filesystem model store holds: its files in the order to stage them,
the sha256 each must have where the source says (git-lfs pointers, a manifest the user gives), and
its commit id when it is a git checkout.

Order: small files first (config, tokenizer, the safetensors index), then the shards in the order
the index first names them, which is the order loaders read them (`model.embed_tokens` comes first
in the index, and transformers and vLLM read shards in their sorted, numbered order).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

SAFETENSORS_INDEX = "model.safetensors.index.json"
SMALL = 16 * 1024**2  # files below this go first, whole: configs, tokenizers, indexes
_LFS_HEAD = b"version https://git-lfs.github.com/spec/v1\n"
_LFS_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.MULTILINE)
_LFS_SIZE = re.compile(rb"^size (\d+)$", re.MULTILINE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


class SourceError(ValueError):
    """The source cannot be staged; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of the model: where its bytes are read from, and the sha256 it must have, if known."""

    name: str  # relative path inside the snapshot, `/`-separated
    path: Path | None  # where the content is (the file itself, or git-lfs's object for a pointer)
    size: int
    sha256: str | None
    mtime_ns: int = 0
    url: str | None = None  # `s3://bucket/key`, for an object in an S3-compatible store (path None)
    etag: str = ""  # the object's ETag: what tells a changed object

    @property
    def location(self) -> str:
        return self.url if self.url is not None else str(self.path)


@dataclasses.dataclass(frozen=True, slots=True)
class SourceListing:
    """The model's files in staging order, and its commit id when the source has one."""

    files: tuple[SourceFile, ...]
    commit: str | None

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def fingerprint(item: SourceFile) -> list[str | int]:
    """Where a file was read from, its size and modification time (an object's ETag): what tells a
    changed source file."""
    return [item.location, item.size, item.mtime_ns or item.etag]


def parse_sha256_manifest(text: str, *, origin: str) -> dict[str, str]:
    """`sha256sum` output (`<hex>  <name>`) or a JSON object {name: hex}; names relative to the model."""
    problems = []
    expected: dict[str, str] = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError as e:
            raise SourceError(f"{origin}: not JSON: {e}") from None
        pairs = [(str(k), str(v)) for k, v in data.items()]
    else:
        pairs = []
        for number, line in enumerate(stripped.splitlines(), 1):
            digest, _, name = line.strip().partition(" ")
            if not name.strip():
                problems.append(f"line {number}: {line!r} is not '<sha256>  <file>'")
                continue
            pairs.append((name.strip().lstrip("*"), digest))
    for name, digest in pairs:
        if not _SHA256.fullmatch(digest.lower()):
            problems.append(f"{name}: {digest!r} is not a sha256")
        else:
            expected[name.removeprefix("./")] = digest.lower()
    if problems:
        raise SourceError(f"{origin}: " + "; ".join(problems))
    return expected


def list_source(folder: Path, *, expected: Mapping[str, str] | None = None) -> SourceListing:
    """The files under `folder` (hidden ones and `.git` skipped) in staging order.

    A git-lfs pointer file stands for its object in `.git/lfs/objects/`, with the pointer's sha256.
    Raises SourceError when the folder is missing or empty, a pointer's object is absent, or
    `expected` names a file the folder lacks.
    """
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files.append(_source_file(folder, relative.as_posix(), path, expected or {}))
    if not files:
        raise SourceError(f"{folder}: holds no files")
    missing = sorted(set(expected or {}) - {f.name for f in files})
    if missing:
        raise SourceError(f"{folder}: the sha256 manifest names files that are not there: {', '.join(missing)}")
    return SourceListing(files=tuple(_staging_order(folder, files)), commit=_git_commit(folder))


def _source_file(folder: Path, name: str, path: Path, expected: Mapping[str, str]) -> SourceFile:
    stat = path.stat()
    sha256 = expected.get(name)
    if stat.st_size < 1024:
        head = path.read_bytes()
        if head.startswith(_LFS_HEAD):
            oid, size = _LFS_OID.search(head), _LFS_SIZE.search(head)
            if oid is None or size is None:
                raise SourceError(f"{path}: a git-lfs pointer without oid or size")
            digest = oid.group(1).decode()
            obj = folder / ".git" / "lfs" / "objects" / digest[:2] / digest[2:4] / digest
            if not obj.is_file():
                raise SourceError(f"{path}: git-lfs object {digest} is not in {folder / '.git/lfs/objects'}")
            if sha256 is not None and sha256 != digest:
                raise SourceError(f"{name}: the manifest says sha256 {sha256}, its git-lfs pointer {digest}")
            stat = obj.stat()
            if stat.st_size != int(size.group(1)):
                raise SourceError(f"{obj}: {stat.st_size} bytes, its pointer says {int(size.group(1))}")
            return SourceFile(name=name, path=obj, size=stat.st_size, sha256=digest, mtime_ns=stat.st_mtime_ns)
    return SourceFile(name=name, path=path, size=stat.st_size, sha256=sha256, mtime_ns=stat.st_mtime_ns)


def _staging_order(folder: Path, files: list[SourceFile]) -> list[SourceFile]:
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return staging_order(files, None)
    try:
        text = index.read_text()
    except OSError as e:
        raise SourceError(f"{index}: cannot be read: {e}") from None
    return staging_order(files, parse_index(text, origin=str(index)))


def parse_index(text: str, *, origin: str) -> dict[str, str]:
    """A safetensors index's weight map (tensor -> shard file), in the index's order."""
    try:
        weight_map = json.loads(text).get("weight_map", {})
    except (ValueError, AttributeError) as e:
        raise SourceError(f"{origin}: not a safetensors index: {e}") from None
    return {str(k): str(v) for k, v in weight_map.items()} if isinstance(weight_map, dict) else {}


def staging_order(files: list[SourceFile], weight_map: dict[str, str] | None) -> list[SourceFile]:
    """Small files by name, then large ones: first the shards in the index's order, then the rest by name."""
    rank: dict[str, int] = {}
    for shard in (weight_map or {}).values():
        rank.setdefault(shard, len(rank))
    small = sorted((f for f in files if f.size < SMALL), key=lambda f: f.name)
    large = [f for f in files if f.size >= SMALL]
    large.sort(key=lambda f: (rank.get(f.name, len(rank)), f.name))
    return small + large


def _git_commit(folder: Path) -> str | None:
    """HEAD's commit id when `folder` is a git checkout (a detached HEAD or a branch ref)."""
    git = folder / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return None
    if head.startswith("ref: "):
        ref = head.removeprefix("ref: ")
        try:
            head = (git / ref).read_text().strip()
        except OSError:
            head = _packed_ref(git, ref) or ""
    return head if _COMMIT.fullmatch(head) else None


def _packed_ref(git: Path, ref: str) -> str | None:
    try:
        lines = (git / "packed-refs").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        commit, _, name = line.partition(" ")
        if name == ref:
            return commit
    return None
