"""The chunk store: where uploaded documents live, in fixed-size chunks (the claim check).

Events never carry file bytes; they carry a manifest URI that names the chunks here. The port
is `Chunks`: `ChunkStore` keeps them in a local folder, `S3Chunks` (s3chunks.py) in an object
store, one object per chunk, `InMemoryChunks` in a dict for tests; one contract test runs the
same assertions against all three (`tests/integration/test_chunks_contract.py`). In the folder, each
chunk is written atomically (temp file, fsync, rename), so a crash never leaves a half-written
chunk under its final name; an object store's PUT is atomic by itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from services.core.config import Settings


@dataclass(frozen=True)
class ChunkRef:
    index: int
    offset: int
    length: int
    sha256: str


class OutsideChunkStore(ValueError):
    """A document id that would name a path outside the chunk store."""


class Chunks(Protocol):
    """A document's bytes as numbered chunks plus a manifest; every method is idempotent and
    refuses (OutsideChunkStore) an id that is not one plain name."""

    def put(self, document_id: str, index: int, data: bytes) -> str: ...
    def get(self, document_id: str, index: int) -> bytes: ...
    def write_manifest(self, document_id: str, chunks: list[ChunkRef], sha256: str, size: int) -> str: ...
    def manifest(self, document_id: str) -> list[ChunkRef]: ...
    def whole_sha256(self, document_id: str) -> str | None: ...  # the manifest's; None without one
    def chunk_count(self, document_id: str) -> int: ...
    def documents(self) -> list[str]: ...
    def delete(self, document_id: str) -> int: ...
    def open(self, document_id: str) -> BinaryIO: ...


def chunks_of(settings: Settings) -> Chunks:
    """The deployment's chunk store: an object store when `UDS3_CHUNK_STORE_URL` names one
    (`s3://bucket/prefix`), else the folder `UDS3_CHUNK_STORE`."""
    if settings.chunk_store_url:
        from services.core.s3chunks import S3Chunks

        return S3Chunks.of(settings)
    return ChunkStore(settings.chunk_store_dir)


def plain_name(document_id: str) -> str:
    if document_id in ("", ".", "..") or "/" in document_id or "\\" in document_id:
        raise OutsideChunkStore(f"document id {document_id!r} is not one plain name")
    return document_id


class InMemoryChunks:
    """The same contract in dicts (tests of a step's own logic). `open` joins the chunks: a
    test fake, not flat in memory like the real reader."""

    def __init__(self) -> None:
        self.chunks: dict[str, dict[int, bytes]] = {}
        self.manifests: dict[str, list[ChunkRef]] = {}
        self.hashes: dict[str, str] = {}

    def put(self, document_id: str, index: int, data: bytes) -> str:
        self.chunks.setdefault(plain_name(document_id), {})[index] = bytes(data)
        return hashlib.sha256(data).hexdigest()

    def get(self, document_id: str, index: int) -> bytes:
        try:
            return self.chunks[plain_name(document_id)][index]
        except KeyError:
            raise FileNotFoundError(f"chunk {index} of {document_id}") from None

    def write_manifest(self, document_id: str, chunks: list[ChunkRef], sha256: str, size: int) -> str:
        self.manifests[plain_name(document_id)] = sorted(chunks, key=lambda c: c.index)
        self.hashes[document_id] = sha256
        return f"memory:///{document_id}/manifest.json"

    def manifest(self, document_id: str) -> list[ChunkRef]:
        try:
            return list(self.manifests[plain_name(document_id)])
        except KeyError:
            raise FileNotFoundError(f"no manifest for {document_id}") from None

    def whole_sha256(self, document_id: str) -> str | None:
        return self.hashes.get(plain_name(document_id))

    def chunk_count(self, document_id: str) -> int:
        return len(self.chunks.get(plain_name(document_id), {}))

    def documents(self) -> list[str]:
        return sorted(self.chunks.keys() | self.manifests.keys())

    def delete(self, document_id: str) -> int:
        self.manifests.pop(plain_name(document_id), None)
        self.hashes.pop(document_id, None)
        return len(self.chunks.pop(document_id, {}))

    def open(self, document_id: str) -> BinaryIO:
        return io.BytesIO(b"".join(self.get(document_id, c.index) for c in self.manifest(document_id)))


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, document_id: str) -> Path:
        """The document's folder: one level directly inside the store, after resolving symlinks.
        Anything else (`..`, a slash, an absolute path, a link out) is refused before any read,
        write or delete touches it."""
        root = self.root.resolve()
        folder = (root / plain_name(document_id)).resolve()
        if folder.parent != root:
            raise OutsideChunkStore(f"document id {document_id!r} names {folder}, not a folder of the store {root}")
        return folder

    def put(self, document_id: str, index: int, data: bytes) -> str:
        """Writes chunk `index` atomically and returns its sha256."""
        folder = self.folder(document_id)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{index:06d}.chunk"
        tmp = folder / f".{index:06d}.chunk.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return hashlib.sha256(data).hexdigest()

    def get(self, document_id: str, index: int) -> bytes:
        return (self.folder(document_id) / f"{index:06d}.chunk").read_bytes()

    def write_manifest(self, document_id: str, chunks: list[ChunkRef], sha256: str, size: int) -> str:
        """Records which chunks make the document; returns the manifest URI (the claim check)."""
        path = self.folder(document_id) / "manifest.json"
        body = {
            "document_id": document_id,
            "sha256": sha256,
            "size_bytes": size,
            "chunks": [c.__dict__ for c in sorted(chunks, key=lambda c: c.index)],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)
        return path.resolve().as_uri()

    def manifest(self, document_id: str) -> list[ChunkRef]:
        body = json.loads((self.folder(document_id) / "manifest.json").read_text())
        return [ChunkRef(**c) for c in body["chunks"]]

    def whole_sha256(self, document_id: str) -> str | None:
        path = self.folder(document_id) / "manifest.json"
        return str(json.loads(path.read_text())["sha256"]) if path.exists() else None

    def chunk_count(self, document_id: str) -> int:
        folder = self.folder(document_id)
        return len(list(folder.glob("*.chunk"))) if folder.is_dir() else 0

    def documents(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def delete(self, document_id: str) -> int:
        """Deletes every chunk of the document; returns how many there were (idempotent)."""
        count = self.chunk_count(document_id)
        shutil.rmtree(self.folder(document_id), ignore_errors=True)
        return count

    def open(self, document_id: str) -> BinaryIO:
        # Raw, unbuffered on purpose: each read goes straight from a chunk file into pdfium's buffer.
        return cast(BinaryIO, _FileReader(self, document_id, self.manifest(document_id)))


class ChunkedReader(io.RawIOBase):
    """A seekable file object over a stored document: each read is served chunk by chunk into
    the caller's buffer (`_read_into`), so memory does not grow with the file. Subclasses say
    how a range of one chunk is read: from its file, or from its object."""

    def __init__(self, document_id: str, chunks: list[ChunkRef]) -> None:
        self.document_id = document_id
        self.chunks = sorted(chunks, key=lambda c: c.index)
        self.size = sum(c.length for c in self.chunks)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fills the whole buffer across chunk boundaries: pypdfium2 takes one call as the block."""
        target = memoryview(buffer).cast("B")
        filled, wanted = 0, len(target)
        while filled < wanted and self.pos < self.size:
            chunk = self._chunk_at(self.pos)
            start = self.pos - chunk.offset
            n = min(wanted - filled, chunk.length - start)
            got = self._read_into(chunk, start, target[filled : filled + n])
            if got <= 0:
                raise OSError(f"chunk {chunk.index} of {self.document_id} is shorter than its manifest says")
            self.pos += got
            filled += got
        return filled

    def _read_into(self, chunk: ChunkRef, start: int, target: memoryview) -> int:
        raise NotImplementedError

    def _chunk_at(self, pos: int) -> ChunkRef:
        # Fixed-size chunks: the index is a division; fall back to a scan for the last one.
        first = self.chunks[0].length or 1
        i = min(pos // first, len(self.chunks) - 1)
        while self.chunks[i].offset > pos:
            i -= 1
        while self.chunks[i].offset + self.chunks[i].length <= pos:
            i += 1
        return self.chunks[i]


class _FileReader(ChunkedReader):
    """Reads straight from the chunk files (`preadv` into the caller's buffer): nothing is
    cached, and jumping between the ends of a PDF costs no chunk reloads."""

    MAX_OPEN = 32  # chunk files kept open at once

    def __init__(self, store: ChunkStore, document_id: str, chunks: list[ChunkRef]) -> None:
        super().__init__(document_id, chunks)
        self.store = store
        self._fds: dict[int, int] = {}

    def _read_into(self, chunk: ChunkRef, start: int, target: memoryview) -> int:
        return os.preadv(self._fd(chunk.index), [target], start)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        super().close()

    def _fd(self, index: int) -> int:
        fd = self._fds.get(index)
        if fd is None:
            if len(self._fds) >= self.MAX_OPEN:
                for old in self._fds.values():
                    os.close(old)
                self._fds.clear()
            fd = self._fds[index] = os.open(self.store.folder(self.document_id) / f"{index:06d}.chunk", os.O_RDONLY)
        return fd
