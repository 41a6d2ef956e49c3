"""The vector service's port, `Vectors`, and its adapters: `VectorIndex` on Milvus by URI (the
stack's milvus-lite server by default) and `InMemoryVectors` for tests. One contract test runs
the same assertions against both (`tests/integration/test_vectors_contract.py`)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from services.core.config import Settings
from services.core.errors import TransientError
from services.core.validation import uuid_id

DIM = 384
TEXT_MAX = 4096


def chunk_key(document_id: str, item: int, chunk_index: int) -> str:
    """Deterministic primary key: a replayed batch upserts the same rows instead of adding new ones.
    Chunks are numbered within their work item (a page range, `items.py`): the same key whichever
    worker embedded it."""
    return f"{document_id}:{item:05d}:{chunk_index:07d}"


def _of_document(document_id: str) -> str:
    """The filter for one document's rows. milvus-lite's filter parser takes no parameters
    (FINDINGS.md), so the value is checked to be a canonical UUID first: it cannot close the
    quote or widen the filter, whatever an event carried."""
    return f'document_id == "{uuid_id("document id", document_id)}"'


class Vectors(Protocol):
    """Chunk embeddings keyed by (document id, chunk number): upserts are idempotent by key."""

    collection: str

    def open(self) -> Vectors: ...
    def close(self) -> None: ...
    def upsert(self, rows: list[dict[str, Any]]) -> None: ...
    def count(self, document_id: str) -> int: ...
    def delete_document(self, document_id: str) -> int: ...
    def documents(self) -> dict[str, int]: ...
    def search(self, vector: list[float], k: int = 5, document_id: str | None = None) -> list[dict[str, Any]]: ...


class InMemoryVectors:
    """The same contract in a dict, searched by cosine similarity (tests of the step's own logic)."""

    def __init__(self, collection: str = "in_memory_chunks") -> None:
        self.collection = collection
        self.rows: dict[str, dict[str, Any]] = {}

    def open(self) -> InMemoryVectors:
        return self

    def close(self) -> None:
        pass

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        self.rows.update({row["id"]: dict(row) for row in rows})

    def count(self, document_id: str) -> int:
        return sum(1 for row in self.rows.values() if row["document_id"] == uuid_id("document id", document_id))

    def delete_document(self, document_id: str) -> int:
        mine = [key for key, row in self.rows.items() if row["document_id"] == uuid_id("document id", document_id)]
        for key in mine:
            del self.rows[key]
        return len(mine)

    def documents(self) -> dict[str, int]:
        return dict(Counter(row["document_id"] for row in self.rows.values()))

    def search(self, vector: list[float], k: int = 5, document_id: str | None = None) -> list[dict[str, Any]]:
        wanted = uuid_id("document id", document_id) if document_id else None
        query = np.asarray(vector, dtype=np.float32)

        def cosine(row: dict[str, Any]) -> float:
            v = np.asarray(row["vector"], dtype=np.float32)
            return float(v @ query / (np.linalg.norm(v) * np.linalg.norm(query) or 1.0))

        found = [(cosine(row), row) for row in self.rows.values() if wanted in (None, row["document_id"])]
        found.sort(key=lambda pair: -pair[0])
        fields = ("document_id", "page", "chunk", "text", "ocr", "ocr_confidence")
        return [{"score": score, **{f: row.get(f, False if f == "ocr" else 0.0) for f in fields}}
                for score, row in found[:k]]


def _channel_options(uri: str) -> dict[str, Any]:
    """milvus-lite's server keeps gRPC's default ping policy (one ping per 5 minutes without a
    call); pymilvus pings every 10 s, which that server answers by closing the channel
    (GOAWAY `too_many_pings`). Towards the local server, ping as often as it allows."""
    if urlsplit(uri).hostname not in ("127.0.0.1", "localhost", "::1"):
        return {}
    return {"grpc_options": {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}}


class VectorIndex:
    """Milvus by URI: the stack's milvus-lite server, or a Milvus cluster (every vector process
    is a client of the same server, so several can run at once)."""

    def __init__(self, uri: str, collection: str) -> None:
        self.uri, self.collection = uri, collection
        self.client: Any = None
        self.fields: set[str] = set()  # the collection's: one made before OCR has no `ocr` fields

    @classmethod
    def of(cls, settings: Settings) -> VectorIndex:
        return cls(settings.milvus_uri, settings.milvus_collection)

    def open(self, attempts: int = 3) -> VectorIndex:
        """Connects and creates the deployment's collection when it is not there yet; a refused
        connection is tried again (a busy server), then reported as transient."""
        from pymilvus import MilvusClient

        for attempt in range(attempts):
            try:
                self.client = MilvusClient(uri=self.uri, **_channel_options(self.uri))
                self._ensure_collection()
                return self
            except Exception as e:
                self.close()
                if attempt == attempts - 1:
                    raise TransientError(f"Milvus at {self.uri} unavailable: {e}") from e
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def drop(self) -> None:
        """Drops the collection (a finished test or bench run's, never a live deployment's)."""
        self.client.drop_collection(self.collection)

    def _ensure_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        if self.client.has_collection(self.collection):
            self.client.load_collection(self.collection)  # a reopened collection starts released
            self._read_fields()
            return
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=80)
        schema.add_field("document_id", DataType.VARCHAR, max_length=64)
        schema.add_field("page", DataType.INT64)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
        schema.add_field("ocr", DataType.BOOL, default_value=False)  # the chunk's first page was read by OCR
        schema.add_field("ocr_confidence", DataType.FLOAT, default_value=0.0)  # Tesseract's mean word confidence
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        try:
            self.client.create_collection(self.collection, schema=schema, index_params=index)
        except Exception:
            if not self.client.has_collection(self.collection):  # else another replica made it first
                raise
            self.client.load_collection(self.collection)
        self._read_fields()

    def _read_fields(self) -> None:
        # milvus-lite's server cannot add a field to a collection: an older one keeps its fields
        # and gets none of the OCR provenance (a new collection, or UDS3_MILVUS_COLLECTION, has it).
        self.fields = {f["name"] for f in self.client.describe_collection(self.collection)["fields"]}

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        if not {"ocr", "ocr_confidence"} <= self.fields:
            rows = [{k: v for k, v in row.items() if k in self.fields} for row in rows]
        try:
            self.client.upsert(self.collection, rows)
        except Exception as e:
            raise TransientError(f"Milvus upsert failed: {e}") from e

    def count(self, document_id: str) -> int:
        rows = self.client.query(self.collection, filter=_of_document(document_id), output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def delete_document(self, document_id: str) -> int:
        before = self.count(document_id)
        try:
            self.client.delete(self.collection, filter=_of_document(document_id))
        except Exception as e:
            raise TransientError(f"Milvus delete failed: {e}") from e
        return before

    def documents(self) -> dict[str, int]:
        """Vector count per document (for the consistency audit)."""
        counts: dict[str, int] = {}
        it = self.client.query_iterator(
            self.collection, batch_size=1000, filter='id != ""', output_fields=["document_id"]
        )
        while batch := it.next():
            for row in batch:
                counts[row["document_id"]] = counts.get(row["document_id"], 0) + 1
        it.close()
        return counts

    def search(self, vector: list[float], k: int = 5, document_id: str | None = None) -> list[dict[str, Any]]:
        """The k nearest chunks, of every document or of one."""
        hits = self.client.search(
            self.collection,
            [vector],
            limit=k,
            filter=_of_document(document_id) if document_id else "",
            output_fields=["document_id", "page", "chunk", "text", *({"ocr", "ocr_confidence"} & self.fields)],
        )
        return [{"score": h["distance"], "ocr": False, "ocr_confidence": 0.0, **h["entity"]} for h in hits[0]]
