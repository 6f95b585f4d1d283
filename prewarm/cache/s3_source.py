"""A model's folder in an S3-compatible store (`s3://bucket/prefix`): its objects as source files,
and ranged GETs of one object for the parallel copy.

An object's sha256 comes from the store when it has one (uploaded with a SHA256 checksum: S3's
`ChecksumSHA256`, read with HeadObject's ChecksumMode), else from a sha256 manifest, else it is
computed while staging. The client is boto3's (`connect`), which reads credentials and
AWS_ENDPOINT_URL as the AWS tools do.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from prewarm.cache import model_source

SCHEME = "s3://"


def is_s3(source: str) -> bool:
    return source.startswith(SCHEME)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/models/acme/tiny-llm` -> (`bucket`, `models/acme/tiny-llm/`); SourceError when
    it names no bucket."""
    bucket, _, prefix = url.removeprefix(SCHEME).partition("/")
    if not url.startswith(SCHEME) or not bucket:
        raise model_source.SourceError(f"{url}: not an s3://BUCKET/PREFIX URL")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def connect(endpoint: str | None = None) -> Any:
    """A boto3 S3 client (imported here: it takes half a second, which only S3 stages pay)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def list_s3_source(client: Any, url: str, *, expected: Mapping[str, str] | None = None) -> model_source.SourceListing:
    """The objects under the URL's prefix in staging order (the safetensors index read first).

    Raises SourceError when the prefix holds nothing, the store cannot be listed, or `expected`
    names an object that is not there.
    """
    bucket, prefix = parse_s3_url(url)
    files = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(prefix) :]
                if not name or any(part.startswith(".") for part in name.split("/")) or name.endswith("/"):
                    continue
                files.append(_source_file(client, bucket, str(item["Key"]), name, item, expected or {}))
        weight_map = None
        if any(f.name == model_source.SAFETENSORS_INDEX for f in files):
            body = client.get_object(Bucket=bucket, Key=prefix + model_source.SAFETENSORS_INDEX)["Body"].read()
            weight_map = model_source.parse_index(body.decode(), origin=f"{url}/{model_source.SAFETENSORS_INDEX}")
    except model_source.SourceError:
        raise
    except Exception as e:  # botocore's errors share no base with OSError
        raise model_source.SourceError(f"{url}: cannot be listed: {e}") from e
    if not files:
        raise model_source.SourceError(f"{url}: holds no objects")
    missing = sorted(set(expected or {}) - {f.name for f in files})
    if missing:
        raise model_source.SourceError(
            f"{url}: the sha256 manifest names objects that are not there: {', '.join(missing)}"
        )
    return model_source.SourceListing(files=tuple(model_source.staging_order(files, weight_map)), commit=None)


def _source_file(
    client: Any, bucket: str, key: str, name: str, item: Mapping[str, Any], expected: Mapping[str, str]
) -> model_source.SourceFile:
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    stored = _sha256_of(head.get("ChecksumSHA256"))
    want = expected.get(name)
    if want is not None and stored is not None and want != stored:
        raise model_source.SourceError(f"{name}: the manifest says sha256 {want}, the store {stored}")
    return model_source.SourceFile(
        name=name,
        path=None,
        size=int(item["Size"]),
        sha256=want or stored,
        url=f"{SCHEME}{bucket}/{key}",
        etag=str(item.get("ETag", "")).strip('"'),
    )


def _sha256_of(checksum: object) -> str | None:
    """S3's base64 ChecksumSHA256 as hex; None when absent or a multipart checksum of checksums."""
    if not isinstance(checksum, str) or "-" in checksum:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def range_reader(client: Any, url: str) -> Callable[[int, int], bytes]:
    """A function reading `length` bytes at `offset` of the object at `url` (one ranged GET)."""
    bucket, _, key = url.removeprefix(SCHEME).partition("/")

    def read(offset: int, length: int) -> bytes:
        try:
            body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")["Body"]
            data: bytes = body.read()
        except Exception as e:  # botocore's errors: a failed range fails the copy
            raise OSError(f"{url}: ranged GET at {offset}: {e}") from e
        if len(data) != length:
            raise OSError(f"{url}: short read: {len(data)} of {length} bytes at offset {offset}")
        return data

    return read
