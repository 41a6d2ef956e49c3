"""Milvus: milvus-lite embedded by default (this service alone opens the file), or a server by URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.core.errors import TransientError
from services.core.validation import uuid_id

DIM = 384
TEXT_MAX = 4096


def chunk_key(document_id: str, chunk_index: int) -> str:
    """Deterministic primary key: a replayed batch upserts the same rows instead of adding new ones."""
    return f"{document_id}:{chunk_index:07d}"


def _of_document(document_id: str) -> str:
    """The filter for one document's rows. milvus-lite's filter parser takes no parameters
    (FINDINGS.md), so the value is checked to be a canonical UUID first: it cannot close the
    quote or widen the filter, whatever an event carried."""
    return f'document_id == "{uuid_id("document id", document_id)}"'


def endpoint_file(milvus_uri: str) -> Path:
    return Path(milvus_uri + ".endpoint")


class VectorIndex:
    """The vector store of chunk embeddings, keyed by (document id, chunk number)."""

    def __init__(self, uri: str, collection: str) -> None:
        self.uri, self.collection = uri, collection
        self.client: Any = None
        self.served: str | None = None  # the embedded server's address, when this process serves the file

    def open(self, serve: bool = False) -> VectorIndex:
        """Connects; with `serve`, opens an embedded milvus-lite file and publishes its endpoint.

        milvus-lite runs inside one process per file; that process (the vector service) writes
        the address of its embedded server next to the file, so the CLI can search through it.
        """
        from pymilvus import MilvusClient

        uri = self.uri
        try:
            if uri.endswith(".db") and serve:
                from milvus_lite.server_manager import server_manager_instance

                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                served = server_manager_instance.start_and_get_uri(uri)
                if served is None:
                    raise TransientError(f"milvus-lite could not open {uri}")
                endpoint_file(self.uri).write_text(served)
                self.served = served
                uri = served
            elif uri.endswith(".db"):
                found = endpoint_file(uri)
                if not found.exists():
                    raise TransientError(
                        f"the vector service is not running: it serves the embedded milvus-lite file {uri}"
                    )
                uri = found.read_text().strip()
            self.client = MilvusClient(uri=uri)
            if serve:
                self._ensure_collection()
        except TransientError:
            raise
        except Exception as e:
            served_by = " (served by the vector service: is it running?)" if uri != self.uri else ""
            raise TransientError(f"Milvus at {uri}{served_by} unavailable: {e}") from e
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        found = endpoint_file(self.uri)
        if self.served and found.exists() and found.read_text().strip() == self.served:
            found.unlink()  # a stopped service's address would only mislead `uds3 search`
        self.served = None

    def _ensure_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        if self.client.has_collection(self.collection):
            self.client.load_collection(self.collection)  # a reopened collection starts released
            return
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=80)
        schema.add_field("document_id", DataType.VARCHAR, max_length=64)
        schema.add_field("page", DataType.INT64)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        self.client.create_collection(self.collection, schema=schema, index_params=index)

    def upsert(self, rows: list[dict[str, Any]]) -> None:
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
            output_fields=["document_id", "page", "chunk", "text"],
        )
        return [{"score": h["distance"], **h["entity"]} for h in hits[0]]
