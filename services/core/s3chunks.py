"""The chunk store on an object store (S3 API: AWS S3, MinIO, Ceph RGW, or the local stack's
s3proxy): one object per chunk, `<prefix>/<document id>/<index>.chunk`, plus the manifest, so
uploaders, verifiers and vector workers on different machines meet without a shared disk.

Reads are ranged GETs of one window at a time (the only bytes held), so a PDF is read page by
page as from the folder store. The same contract test runs against it as against the others
(`tests/integration/test_chunks_contract.py`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from services.core.chunkstore import ChunkedReader, ChunkRef, plain_name
from services.core.config import Settings

WINDOW = 1024 * 1024  # bytes one ranged GET fetches: pdfium's many small reads hit one window


def s3_client(settings: Settings) -> Any:
    """A client of `UDS3_S3_ENDPOINT` (empty: AWS) with the standard AWS credentials; the
    local stack's are used only for an endpoint on this machine."""
    key, secret = settings.s3_credentials()
    # Checksums only where S3 requires them: s3proxy refuses the newer default headers.
    config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                    retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=16)
    return boto3.client("s3", endpoint_url=settings.s3_endpoint or None, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name=settings.s3_region, config=config)


def split_url(url: str, what: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{what} is s3://bucket[/prefix], not {url!r}")
    return parts.netloc, parts.path.strip("/")


def missing(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class S3Prefix:
    """A prefix of a bucket (`s3://bucket/prefix`) through one client: what the chunk store and
    the inbox have in common."""

    what = "an S3 URL"  # for the error on a malformed one

    def __init__(self, url: str, client: Any) -> None:
        self.url, self.client = url, client
        self.bucket, self.prefix = split_url(url, self.what)

    def ensure_bucket(self) -> None:
        """Provisioning: the bucket exists (created when the account may)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def _keys(self, prefix: str) -> list[str]:
        return [o["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])]


class S3Chunks(S3Prefix):
    what = "a chunk store URL (UDS3_CHUNK_STORE_URL)"

    @classmethod
    def of(cls, settings: Settings) -> S3Chunks:
        return cls(settings.chunk_store_url, s3_client(settings))

    def _key(self, document_id: str, name: str = "") -> str:
        return "/".join(p for p in (self.prefix, plain_name(document_id), name) if p) + ("" if name else "/")

    def put(self, document_id: str, index: int, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(document_id, f"{index:06d}.chunk"), Body=data)
        return hashlib.sha256(data).hexdigest()

    def get(self, document_id: str, index: int) -> bytes:
        return self._read(self._key(document_id, f"{index:06d}.chunk"))

    def write_manifest(self, document_id: str, chunks: list[ChunkRef], sha256: str, size: int) -> str:
        key = self._key(document_id, "manifest.json")
        body = {"document_id": document_id, "sha256": sha256, "size_bytes": size,
                "chunks": [c.__dict__ for c in sorted(chunks, key=lambda c: c.index)]}
        self.client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(body).encode())
        return f"s3://{self.bucket}/{key}"

    def manifest(self, document_id: str) -> list[ChunkRef]:
        body = json.loads(self._read(self._key(document_id, "manifest.json")))
        return [ChunkRef(**c) for c in body["chunks"]]

    def whole_sha256(self, document_id: str) -> str | None:
        try:
            return str(json.loads(self._read(self._key(document_id, "manifest.json")))["sha256"])
        except FileNotFoundError:
            return None

    def chunk_count(self, document_id: str) -> int:
        return sum(1 for key in self._keys(self._key(document_id)) if key.endswith(".chunk"))

    def documents(self) -> list[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            found += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(found)

    def delete(self, document_id: str) -> int:
        """Deletes every object of the document; returns how many chunks there were (idempotent)."""
        keys = list(self._keys(self._key(document_id)))
        # One DELETE per object: the batch call needs a checksum header s3proxy does not take, and
        # a document has tens of chunks (60 for 300 MB), not thousands.
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return sum(1 for key in keys if key.endswith(".chunk"))

    def open(self, document_id: str) -> BinaryIO:
        return cast(BinaryIO, _ObjectReader(self, document_id, self.manifest(document_id)))

    def read_range(self, document_id: str, index: int, start: int, end: int) -> bytes:
        """Bytes [start, end) of one chunk's object."""
        return self._read(self._key(document_id, f"{index:06d}.chunk"), f"bytes={start}-{end - 1}")

    def _read(self, key: str, byte_range: str = "") -> bytes:
        try:
            extra = {"Range": byte_range} if byte_range else {}
            return cast(bytes, self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read())
        except ClientError as e:
            if missing(e):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise


class _ObjectReader(ChunkedReader):
    """Serves reads from one cached window of one chunk; a read outside it fetches the next."""

    def __init__(self, store: S3Chunks, document_id: str, chunks: list[ChunkRef]) -> None:
        super().__init__(document_id, chunks)
        self.store = store
        self._window: tuple[int, int, bytes] = (-1, 0, b"")  # chunk index, start, bytes

    def _read_into(self, chunk: ChunkRef, start: int, target: memoryview) -> int:
        index, base, data = self._window
        if index != chunk.index or not base <= start < base + len(data):
            base = start - start % WINDOW
            data = self.store.read_range(self.document_id, chunk.index, base, min(base + WINDOW, chunk.length))
            self._window = (chunk.index, base, data)
        n = min(len(target), base + len(data) - start)
        target[:n] = data[start - base : start - base + n]
        return n
