"""The ingest inbox on an object store: where a submitted document waits until the uploader
has read it, when clients and uploaders share no disk (`UDS3_INBOX_URL=s3://bucket/prefix`).

The client stages a file into it (a multipart upload, several parts in flight); the uploader
reads only objects under its prefix, each as one stream, so only the current chunk is in
memory. Without the URL the inbox is the folder UDS3_ALLOWED_ROOT (`services.client.stage`,
`services/uploader/validation.py`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlsplit

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from services.core.chunkstore import plain_name
from services.core.config import Settings
from services.core.s3chunks import S3Prefix, missing, s3_client

PART_BYTES = 8 * 1024 * 1024  # multipart part size; 4 parts in flight while staging
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class S3Inbox(S3Prefix):
    what = "an inbox URL (UDS3_INBOX_URL)"

    @classmethod
    def of(cls, settings: Settings) -> S3Inbox:
        return cls(settings.inbox_url, s3_client(settings))

    def stage(self, source: Path, document_id: str, progress: Callable[[int, int], None] | None = None) -> str:
        """Uploads a local file to `<prefix>/staged/<document id>/<name>`; returns its s3:// URI.
        The name keeps only letters, digits, `.`, `_` and `-`, so the key is one plain segment."""
        name = _UNSAFE.sub("_", source.name).lstrip(".") or "document"
        key = "/".join(p for p in (self.prefix, "staged", plain_name(document_id), name) if p)
        total, done, lock = source.stat().st_size, 0, threading.Lock()

        def sent(n: int) -> None:  # called from the transfer's threads
            nonlocal done
            with lock:
                done += n
                if progress is not None:
                    progress(done, total)

        config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=4)
        self.client.upload_file(str(source), self.bucket, key, Config=config, Callback=sent)
        return f"s3://{self.bucket}/{key}"

    def key_of(self, source_uri: str) -> str:
        """The key of an object in this inbox; ValueError for anything else (another bucket,
        outside the prefix, `.`/`..` or empty segments, control characters)."""
        parts = urlsplit(source_uri)
        if parts.scheme != "s3" or parts.netloc != self.bucket or parts.query or parts.fragment:
            raise ValueError(f"not an object of the inbox s3://{self.bucket}/{self.prefix}")
        key = parts.path[1:]
        segments = key.split("/")
        prefix = self.prefix.split("/") if self.prefix else []
        if segments[: len(prefix)] != prefix or len(segments) <= len(prefix):
            raise ValueError(f"outside the inbox s3://{self.bucket}/{self.prefix}")
        if any(s in ("", ".", "..") for s in segments) or "\\" in key or not key.isprintable():
            raise ValueError("the key is not a plain path (empty, `.` or `..` segments, or control characters)")
        return key

    def size(self, key: str) -> int:
        """FileNotFoundError when there is no such object, PermissionError when it may not be read."""
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if missing(e):
                raise FileNotFoundError(key) from None
            if e.response.get("Error", {}).get("Code") in ("403", "AccessDenied", "Forbidden"):
                raise PermissionError(key) from None
            raise

    def head(self, key: str, n: int) -> bytes:
        return cast(bytes, self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"].read())

    def open(self, key: str) -> BinaryIO:
        """The object as one stream (read in order, once)."""
        return cast(BinaryIO, self.client.get_object(Bucket=self.bucket, Key=key)["Body"])

    def empty(self) -> int:
        """Deletes every object under the prefix (a test or bench run's inbox); returns how many."""
        keys = self._keys(f"{self.prefix}/" if self.prefix else "")
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)


def inbox_of(settings: Settings) -> S3Inbox | None:
    """The object-store inbox when `UDS3_INBOX_URL` names one; None: the folder inbox."""
    return S3Inbox.of(settings) if settings.inbox_url else None
