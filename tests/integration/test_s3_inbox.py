"""The ingest inbox on an object store (the stack's s3proxy, through the S3 API): the client
stages a file there, the uploader reads it from there into the S3 chunk store, and refuses
every source that is not an object of the inbox, with a reason, storing nothing."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.core.config import Settings
from services.core.events import UPLOAD_COMPLETED
from services.core.inbox import S3Inbox
from services.core.s3chunks import S3Chunks
from services.uploader.step import UploaderStep
from tests.integration.test_uploader import (
    PDF_HEAD,
    Crash,
    binary_pdf,
    chunk_stored_indexes,
    crash_after,
    harness,
    make_settings,
    submission,
)

pytestmark = pytest.mark.stack


@pytest.fixture
def settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    run = f"{stack.deployment}/{uuid.uuid4().hex[:8]}"
    endpoint = f"http://127.0.0.1:{os.environ.get('UDS3_S3_PORT', '18333')}"
    settings = replace(make_settings(tmp_path), chunk_store_url=f"s3://uds3-tests/{run}/chunks",
                       inbox_url=f"s3://uds3-tests/{run}/inbox", s3_endpoint=endpoint)
    inbox, chunks = S3Inbox.of(settings), S3Chunks.of(settings)
    inbox.ensure_bucket()
    yield settings
    inbox.empty()
    for doc in chunks.documents():
        chunks.delete(doc)


def test_a_staged_file_is_uploaded_from_the_inbox_into_chunks(settings: Settings, tmp_path: Path) -> None:
    source, doc = binary_pdf(tmp_path / "case file (2).pdf", 10 * 64 * 1024 + 99), str(uuid.uuid4())
    inbox, progress = S3Inbox.of(settings), []
    uri = inbox.stage(source, doc, lambda done, total: progress.append((done, total)))
    assert uri == f"s3://{inbox.bucket}/{inbox.prefix}/staged/{doc}/case_file__2_.pdf"
    assert progress[-1] == (source.stat().st_size, source.stat().st_size)
    uploader = harness(UploaderStep.from_settings(settings), settings)
    sub = submission(uri, doc=doc)
    assert uploader.feed(sub).action == "handled"
    done = uploader.last(doc, UPLOAD_COMPLETED).payload
    data = source.read_bytes()
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert (done["size_bytes"], done["chunk_count"]) == (len(data), 11)
    chunks = S3Chunks.of(settings)
    with chunks.open(doc) as stream:
        assert stream.read() == data
    assert done["manifest_uri"] == f"s3://{chunks.bucket}/{chunks.prefix}/{doc}/manifest.json"


def test_a_crash_mid_upload_from_the_inbox_resumes_and_stores_each_chunk_once(
    settings: Settings, tmp_path: Path
) -> None:
    source, doc = binary_pdf(tmp_path / "crash.pdf", 12 * 64 * 1024), str(uuid.uuid4())
    uri = S3Inbox.of(settings).stage(source, doc)
    uploader = harness(UploaderStep.from_settings(settings), settings)
    crash_after(uploader, stored=5)
    with pytest.raises(Crash):
        uploader.feed(submission(uri, doc=doc), offset=1)
    assert chunk_stored_indexes(uploader, doc) == list(range(4))
    uploader.checkpoints.clear()
    uploader.feed(submission(uri, doc=doc), offset=1)  # redelivered: reads the object again from the start
    assert chunk_stored_indexes(uploader, doc) == list(range(12))
    assert uploader.last(doc, UPLOAD_COMPLETED).payload["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def _put(settings: Settings, key: str, body: bytes) -> str:
    inbox = S3Inbox.of(settings)
    inbox.client.put_object(Bucket=inbox.bucket, Key=key, Body=body)
    return f"s3://{inbox.bucket}/{key}"


@pytest.mark.parametrize(
    ("where", "body", "reason"),
    [
        ("other-bucket", PDF_HEAD + b"x", "not an object of the inbox"),
        ("outside-prefix", PDF_HEAD + b"x", "outside the inbox"),
        ("dotdot", PDF_HEAD + b"x", "not a plain path"),
        ("missing", None, "no such object"),
        ("empty", b"", "the file is empty"),
        ("not-a-pdf", b"<html>", "named .pdf but not a PDF"),
        ("too-big", PDF_HEAD + b"x" * 9 * 1024 * 1024, "over the limit"),
    ],
)
def test_a_source_that_is_not_an_object_of_the_inbox_is_refused_with_a_reason(
    settings: Settings, where: str, body: bytes | None, reason: str
) -> None:
    inbox = S3Inbox.of(settings)
    inside = f"{inbox.prefix}/staged/{where}/doc.pdf"
    uri = {
        "other-bucket": f"s3://another-bucket/{inside}",
        "outside-prefix": _put(settings, f"{inbox.prefix}-elsewhere/doc.pdf", PDF_HEAD + b"x"),
        "dotdot": f"s3://{inbox.bucket}/{inbox.prefix}/staged/../../elsewhere/doc.pdf",
        "missing": f"s3://{inbox.bucket}/{inside}",
    }.get(where) or _put(settings, inside, body or b"")
    uploader = harness(UploaderStep.from_settings(settings), settings)
    sub = submission(uri)
    uploader.feed(sub)
    assert reason in uploader.last(sub.document_id, "UploadFailed").payload["reason"]
    assert S3Chunks.of(settings).chunk_count(sub.document_id) == 0
    if where == "outside-prefix":
        inbox.client.delete_object(Bucket=inbox.bucket, Key=f"{inbox.prefix}-elsewhere/doc.pdf")


def test_an_object_source_is_refused_where_the_inbox_is_a_folder(settings: Settings) -> None:
    folder_inbox = replace(settings, inbox_url="")
    uri = _put(settings, f"{S3Inbox.of(settings).prefix}/staged/x/doc.pdf", PDF_HEAD + b"x")
    uploader = harness(UploaderStep.from_settings(folder_inbox), folder_inbox)
    sub = submission(uri)
    uploader.feed(sub)
    assert "inbox is a folder" in uploader.last(sub.document_id, "UploadFailed").payload["reason"]
