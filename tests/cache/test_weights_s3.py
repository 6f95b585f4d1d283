"""Staging from an S3-compatible store: a real moto server process on a free loopback port, the
model uploaded with boto3 (some objects with their SHA256 checksum), staged with ranged GETs by the
`prewarm cache stage` command, and read back by huggingface_hub and safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from model_files import write_model
from support import free_port, wait_until

from prewarm.cache import hub_layout, model_source, s3_source, staging

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if binary is None:
        pytest.fail("moto_server is not installed (the test extra installs moto[server])")
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **_keys())

        def answers() -> bool:
            try:
                client.list_buckets()
            except Exception:
                return False
            return True

        wait_until(answers, within=30, what="moto_server answered")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def _upload(endpoint: str, folder: Path, bucket: str, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint, **_keys())
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        extra = {"ChecksumAlgorithm": "SHA256"} if path.suffix == ".safetensors" else {}
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes(), **extra)


def test_a_model_in_s3_is_staged_with_ranged_gets_and_loads(s3_endpoint: str, tmp_path: Path) -> None:
    source = tmp_path / "local" / "tiny-llm"
    write_model(source, shards=2, shard_bytes=12 * 1024**2)  # several 8 MiB ranges per shard
    _upload(s3_endpoint, source, "models", "acme/tiny-llm")
    root = tmp_path / "volume"
    command = [
        sys.executable, "-m", "prewarm.cli", "cache", "stage", "acme/tiny-llm", "--revision", "main",
        "--source", "s3://models/acme/tiny-llm", "--root", str(root), "--s3-endpoint", s3_endpoint,
    ]  # fmt: skip
    env = {**os.environ, **CREDENTIALS}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    staged = json.loads(first.stdout)
    total = sum(p.stat().st_size for p in source.iterdir())
    assert (staged["hit"], staged["staged_bytes"]) == (False, total)
    snapshot = Path(staged["snapshot"])
    for path in source.iterdir():
        assert (
            hashlib.sha256((snapshot / path.name).read_bytes()).hexdigest()
            == hashlib.sha256(path.read_bytes()).hexdigest()
        )
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["hit"] is True  # unchanged objects (same ETags): nothing read again

    # The same content from a folder gets the same revision id: the id follows the content.
    from_folder = staging.stage_weights(tmp_path / "other", model="acme/tiny-llm", revision="main", source=source)
    assert from_folder.revision_id == staged["revision_id"]
    load = (
        "import json\nfrom huggingface_hub import snapshot_download\nfrom safetensors.numpy import load_file\n"
        "path = snapshot_download('acme/tiny-llm')\n"
        "print(sum(a.nbytes for s in ('model-00001-of-00002', 'model-00002-of-00002')\n"
        "          for a in load_file(f'{path}/{s}.safetensors').values()))\n"
    )
    env_hub = {**os.environ, "HF_HUB_CACHE": str(hub_layout.weights_root(root)), "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", load], env=env_hub, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout) > 24 * 1024**2 * 0.9


def test_the_store_s_checksums_and_the_manifest_are_checked(s3_endpoint: str, tmp_path: Path) -> None:
    source = tmp_path / "local" / "m"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "weights.safetensors").write_bytes(b"w" * 1000)
    _upload(s3_endpoint, source, "models", "org/m")
    client = boto3.client("s3", endpoint_url=s3_endpoint, **_keys())
    listing = s3_source.list_s3_source(client, "s3://models/org/m")
    by_name = {f.name: f for f in listing.files}
    assert by_name["weights.safetensors"].sha256 == hashlib.sha256(b"w" * 1000).hexdigest()  # from the store
    assert by_name["config.json"].sha256 is None  # uploaded without a checksum: computed while staging
    with pytest.raises(
        model_source.SourceError, match=r"weights\.safetensors: the manifest says sha256 0{64}, the store"
    ):
        s3_source.list_s3_source(client, "s3://models/org/m", expected={"weights.safetensors": "0" * 64})
    with pytest.raises(model_source.SourceError, match="s3://models/org/none: holds no objects"):
        s3_source.list_s3_source(client, "s3://models/org/none")
    with pytest.raises(
        staging.StageError, match=r"config\.json: sha256 [0-9a-f]{64} read from s3://models/org/m/config"
    ):
        staging.stage_weights(
            tmp_path / "v", model="org/m", revision="main", source="s3://models/org/m", s3=client,
            expected={"config.json": "1" * 64},
        )  # fmt: skip
