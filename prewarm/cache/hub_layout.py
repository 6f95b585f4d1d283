"""The `weights/` tier's folders, in the Hugging Face hub cache layout, so model servers read it
unchanged through HF_HUB_CACHE:

    weights/models--ORG--NAME/blobs/<sha256>                 the files' contents, read-only
    weights/models--ORG--NAME/snapshots/<revision id>/<file>  relative links into blobs/
    weights/models--ORG--NAME/refs/<revision name>            the revision id it points at

Each repository folder is also a cache entry (entries.py): `manifest.json`, `.lock` and `leases/`
sit beside the hub's three folders, which the hub's readers ignore.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

WEIGHTS = "weights"  # the tier's folder under the volume's root: what HF_HUB_CACHE names
BLOBS = "blobs"
SNAPSHOTS = "snapshots"
REFS = "refs"
NODE_LABEL_PREFIX = "weights.prewarm.dev/"
INCOMING = ".incoming-"  # prefix of what is being written: never a name a reader looks up
_COMMIT = re.compile(r"[0-9a-f]{40}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def weights_root(root: Path) -> Path:
    """The tier's folder on the volume (the value of HF_HUB_CACHE in pods)."""
    return root / WEIGHTS


def repo_folder(model: str) -> str:
    """`acme/tiny-llm` -> `models--acme--tiny-llm`, as huggingface_hub's `repo_folder_name` names it."""
    return "--".join(["models", *model.split("/")])


def node_label(folder: str) -> str:
    """The node label saying a node holds a repository folder's weights (its value: the revision
    id): `weights.prewarm.dev/models--acme--tiny-llm`, shortened with a digest past 63 characters."""
    name = (
        folder
        if len(folder) <= 63
        else f"{folder[:54].rstrip('-_.')}-{hashlib.sha256(folder.encode()).hexdigest()[:8]}"
    )
    return f"{NODE_LABEL_PREFIX}{name}"


def check_model(model: str) -> str | None:
    """Why `model` is not a hub model id (`ORG/NAME` or `NAME`), or None."""
    if not _MODEL.fullmatch(model) or ".." in model or "--" in model:
        return "must be ORG/NAME or NAME (letters, digits, '.', '_', '-'; no '--' or '..')"
    return None


def check_revision(revision: str) -> str | None:
    """Why `revision` cannot name a ref file, or None."""
    if not _REVISION.fullmatch(revision) or ".." in revision.split("/") or revision.endswith("/"):
        return "must be a branch, tag or commit name (letters, digits, '.', '_', '-', '/')"
    return None


def is_commit(revision: str) -> bool:
    """A 40-hex commit id, which the hub uses as the snapshot folder's name."""
    return _COMMIT.fullmatch(revision) is not None


def content_revision(files: Mapping[str, str]) -> str:
    """A stable 40-hex revision id for a source without a commit id: a digest of every
    (relative path, sha256) pair, so the same content always gets the same snapshot."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()[:40]


def blob_path(repo: Path, sha256: str) -> Path:
    return repo / BLOBS / sha256


def read_ref(repo: Path, revision: str) -> str | None:
    """The revision id `refs/<revision>` points at; a commit id names itself."""
    if is_commit(revision):
        return revision
    try:
        text = (repo / REFS / revision).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text if is_commit(text) else None


def write_ref(repo: Path, revision: str, revision_id: str) -> None:
    """Point `refs/<revision>` at `revision_id` atomically (no ref for a commit id: it names itself)."""
    if revision == revision_id:
        return
    path = repo / REFS / revision
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, revision_id.encode())


def publish_snapshot(repo: Path, revision_id: str, files: Mapping[str, str]) -> Path:
    """Make `snapshots/<revision_id>/` hold a relative link per file to its blob, all at once: the
    links are made in a hidden folder that is then renamed into place. An existing snapshot gets
    links for files it lacks (same revision id, same content)."""
    snapshots = repo / SNAPSHOTS
    snapshots.mkdir(parents=True, exist_ok=True)
    final = snapshots / revision_id
    if final.is_dir():
        _link_files(final, repo, files)
        return final
    incoming = Path(tempfile.mkdtemp(prefix=INCOMING, dir=snapshots))
    os.chmod(incoming, 0o755)  # mkdtemp's 0700 would shut out a model server running as another user
    _link_files(incoming, repo, files)
    os.rename(incoming, final)
    return final


def _link_files(snapshot: Path, repo: Path, files: Mapping[str, str]) -> None:
    for name, sha256 in files.items():
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(blob_path(repo, sha256), link.parent)
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(link) == relative:
                continue
            link.unlink()
        os.symlink(relative, link)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(prefix=INCOMING, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide the ref from a model server of another user
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def remove_incoming(repo: Path) -> int:
    """Delete what a stager killed mid-write left behind (call under the entry's lock: no live
    stager is writing then). Returns how many were removed."""
    removed = 0
    for folder in (repo / BLOBS, repo / SNAPSHOTS, repo / REFS):
        if not folder.is_dir():
            continue
        for path in folder.rglob(f"{INCOMING}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed
