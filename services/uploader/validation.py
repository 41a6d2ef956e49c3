"""Checks a file before anything is written. Each refusal says what a person can do about it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlparse

from services.core.errors import PermanentError
from services.core.validation import PDF, TEXT

if TYPE_CHECKING:
    from services.core.inbox import S3Inbox


class Refused(PermanentError):
    """The file cannot be ingested as submitted."""


@dataclass(frozen=True)
class ValidFile:
    location: str  # the real path, or the object's s3:// URI
    size: int
    content_type: str
    open: Callable[[], BinaryIO]  # the bytes from the start, read once in order


def path_of(source_uri: str) -> Path:
    parsed = urlparse(source_uri)
    if parsed.scheme not in ("", "file"):
        raise Refused(f"unsupported location {source_uri!r}: only local files (file://) can be ingested")
    return Path(unquote(parsed.path) if parsed.scheme else source_uri)


def validate(source_uri: str, allowed_root: Path, max_bytes: int, inbox: S3Inbox | None = None) -> ValidFile:
    """The source, checked: a file under `allowed_root`, or an object of the `inbox` on an
    object store (the only place an s3:// source may name)."""
    if urlparse(source_uri).scheme == "s3":
        if inbox is None:
            raise Refused(f"{source_uri}: this deployment's inbox is a folder, not an object store")
        return validate_object(source_uri, inbox, max_bytes)
    raw = path_of(source_uri)
    if not raw.is_absolute():
        raise Refused(f"{raw}: give an absolute path")
    if not os.path.lexists(raw):
        raise Refused(f"{raw}: no such file")
    try:
        real = raw.resolve()  # follows symlinks and `..`, so the root check sees the real place
    except (OSError, RuntimeError) as e:  # a symlink loop, or a folder on the way we may not enter
        raise Refused(f"{raw}: the path cannot be resolved ({e})") from e
    root = allowed_root.resolve()
    if not real.is_relative_to(root):
        raise Refused(f"{raw}: outside the allowed root {root} (resolves to {real}); move it under the root")
    try:
        st = real.stat()
    except FileNotFoundError as e:
        raise Refused(f"{raw}: no such file (a symlink to {real}, which does not exist)") from e
    except OSError as e:
        raise Refused(f"{raw}: cannot be inspected ({e.strerror}); check the permissions of its folders") from e
    if stat.S_ISDIR(st.st_mode):
        raise Refused(f"{raw}: is a directory; submit one file at a time")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{raw}: not a regular file (a device, pipe or socket)")
    if not os.access(real, os.R_OK):
        raise Refused(f"{raw}: not readable by the uploader (check its permissions)")
    _check_size(raw, st.st_size, max_bytes)
    try:  # os.access can say yes where open says no (ACLs, network file systems, a chmod since)
        with open(real, "rb") as f:
            head = f.read(8192)
    except PermissionError as e:
        raise Refused(f"{raw}: not readable by the uploader (check its permissions)") from e
    except OSError as e:
        raise Refused(f"{raw}: cannot be read ({e.strerror})") from e
    return ValidFile(str(real), st.st_size, sniff(head, raw), lambda: open(real, "rb"))


def validate_object(source_uri: str, inbox: S3Inbox, max_bytes: int) -> ValidFile:
    try:
        key = inbox.key_of(source_uri)
        size = inbox.size(key)
    except ValueError as e:
        raise Refused(f"{source_uri}: {e}; stage it with the client") from e
    except FileNotFoundError as e:
        raise Refused(f"{source_uri}: no such object") from e
    except PermissionError as e:
        raise Refused(f"{source_uri}: not readable by the uploader (check the bucket policy)") from e
    _check_size(source_uri, size, max_bytes)
    return ValidFile(source_uri, size, sniff(inbox.head(key, 8192), PurePosixPath(key)), lambda: inbox.open(key))


def _check_size(where: object, size: int, max_bytes: int) -> None:
    if size == 0:
        raise Refused(f"{where}: the file is empty")
    if size > max_bytes:
        raise Refused(f"{where}: {size} bytes is over the limit of {max_bytes} (UDS3_MAX_FILE_BYTES)")


def sniff(head: bytes, path: PurePath) -> str:
    """The content type from the magic bytes, never from the file name; but a file named `.pdf`
    must be one (HTML or a script saved as `.pdf` is a mistake or an attack, not text to index)."""
    if head.startswith(b"%PDF-"):
        return PDF
    if path.suffix.lower() == ".pdf":
        raise Refused(f"{path}: named .pdf but not a PDF (it does not start with %PDF-)")
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return TEXT
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 4:  # a multi-byte character cut at the edge of the sample
                return TEXT
    raise Refused(f"{path}: not a PDF or UTF-8 text file (unrecognised content); only those can be ingested")
