"""Every endpoint and tunable in one place, read from environment variables.

Defaults match the native stack that `infra/stack.sh` starts; the same code runs against
a Kafka cluster, a Milvus server, Neo4j and PostgreSQL elsewhere by setting these variables.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _is_loopback(server: str) -> bool:
    return server.rsplit(":", 1)[0].strip("[]") in {"127.0.0.1", "localhost", "::1"}


def is_loopback_url(url: str) -> bool:
    return urlsplit(url).hostname in {"127.0.0.1", "localhost", "::1"}


def kafka_nodes() -> int:
    """1: the stack's single Kafka node; 3: its cluster profile (`make up CLUSTER=3`)."""
    return int(_env("UDS3_KAFKA_NODES", "1"))


def _local_bootstrap() -> str:
    """The local stack's brokers, as `infra/stack.sh` numbers their ports."""
    if kafka_nodes() == 1:
        return f"127.0.0.1:{_env('UDS3_KAFKA_PORT', '19092')}"
    base = int(_env("UDS3_KAFKA_CLUSTER_PORT", "29092"))
    return ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(kafka_nodes()))


def _stack_dir() -> Path:
    return Path(_env("UDS3_STACK_DIR", str(REPO_ROOT / ".stack")))


def isolated_env(prefix: str, folder: Path) -> dict[str, str]:
    """The variables that make one deployment separate from every other on the same stack:
    its topics and consumer groups (and with them its graph namespace and Milvus collection),
    its database (each event store is an outbox: see provision.py), and its chunk store and
    ingest root in `folder`."""
    return {
        "UDS3_TOPIC_PREFIX": prefix,
        "UDS3_PG_DATABASE": f"uds3_{prefix}",
        "UDS3_CHUNK_STORE": str(folder / "chunks"),
        "UDS3_ALLOWED_ROOT": str(folder),
        "UDS3_METRICS_BASE_PORT": "0",  # no endpoints unless the run asks (they would meet other runs')
        "UDS3_TRACE_DIR": "",  # no span files unless the run asks
    }


def collection_for(deployment: str) -> str:
    """A deployment's Milvus collection: Milvus names take letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{deployment}_chunks")


@dataclass(frozen=True)
class Settings:
    # The deployment: its topic prefix, and the namespace of its nodes in a shared Neo4j database.
    deployment: str = field(default_factory=lambda: _env("UDS3_TOPIC_PREFIX", "uds3"))
    kafka_bootstrap: str = field(default_factory=lambda: _env("UDS3_KAFKA_BOOTSTRAP", _local_bootstrap()))
    # SASL_PLAINTEXT on the local stack; SASL_SSL (TLS with the system's CAs) anywhere else.
    kafka_security_protocol: str = field(
        default_factory=lambda: _env("UDS3_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    )
    pg_host: str = field(default_factory=lambda: _env("UDS3_PG_HOST", "127.0.0.1"))
    pg_port: int = field(default_factory=lambda: int(_env("UDS3_PG_PORT", "15432")))
    pg_database: str = field(default_factory=lambda: _env("UDS3_PG_DATABASE", "uds3"))
    # The admin role creates databases, schemas and the per-service roles (setup only).
    pg_admin_user: str = field(default_factory=lambda: _env("UDS3_PG_ADMIN_USER", "uds3"))
    pg_admin_password: str = field(default_factory=lambda: _env("UDS3_PG_ADMIN_PASSWORD", "uds3"))
    neo4j_uri: str = field(
        default_factory=lambda: _env("UDS3_NEO4J_URI", f"bolt://127.0.0.1:{_env('UDS3_NEO4J_BOLT_PORT', '17687')}")
    )
    # The defaults are the local stack's (infra/stack.sh); a deployment sets its own in the environment.
    neo4j_user: str = field(default_factory=lambda: _env("UDS3_NEO4J_USER", "neo4j"))
    neo4j_password: str = field(default_factory=lambda: _env("UDS3_NEO4J_PASSWORD", "uds3-local-graph"))
    # The stack's milvus-lite server, shared by every vector process as a Milvus cluster would be;
    # a `.db` file path runs milvus-lite inside one process instead (scripts, never the services).
    milvus_uri: str = field(
        default_factory=lambda: _env("UDS3_MILVUS_URI", f"http://127.0.0.1:{_env('UDS3_MILVUS_PORT', '19530')}")
    )
    milvus_collection: str = field(
        default_factory=lambda: _env("UDS3_MILVUS_COLLECTION", collection_for(_env("UDS3_TOPIC_PREFIX", "uds3")))
    )
    chunk_store_dir: Path = field(
        default_factory=lambda: Path(_env("UDS3_CHUNK_STORE", str(_stack_dir() / "data" / "chunks")))
    )
    # The chunk store on an object store instead (`s3://bucket/prefix`): the multi-node option.
    chunk_store_url: str = field(default_factory=lambda: _env("UDS3_CHUNK_STORE_URL", ""))
    # Empty: AWS itself; the local stack's s3proxy is http://127.0.0.1:18333 (UDS3_S3_PORT).
    s3_endpoint: str = field(default_factory=lambda: _env("UDS3_S3_ENDPOINT", ""))
    s3_region: str = field(default_factory=lambda: _env("AWS_DEFAULT_REGION", "us-east-1"))
    # The ingest inbox: the services read documents only from under it (the client stages others
    # in); no `..` or symlink escapes.
    allowed_root: Path = field(default_factory=lambda: Path(_env("UDS3_ALLOWED_ROOT", str(_stack_dir() / "inbox"))))
    # The inbox on an object store instead (`s3://bucket/prefix`): clients on other machines.
    inbox_url: str = field(default_factory=lambda: _env("UDS3_INBOX_URL", ""))
    max_file_bytes: int = field(default_factory=lambda: int(_env("UDS3_MAX_FILE_BYTES", str(4 * 1024**3))))
    chunk_bytes: int = field(default_factory=lambda: int(_env("UDS3_CHUNK_BYTES", str(5 * 1024 * 1024))))
    # Chunk writes in flight while the next is read and hashed: a SIGKILL redoes at most these (G4);
    # 1 redoes at most one chunk, at about two thirds of the speed (docs/benchmarks.md, upload).
    upload_parallelism: int = field(default_factory=lambda: int(_env("UDS3_UPLOAD_PARALLELISM", "4")))
    text_chunk_chars: int = field(default_factory=lambda: int(_env("UDS3_TEXT_CHUNK_CHARS", "1000")))
    text_chunk_overlap: int = field(default_factory=lambda: int(_env("UDS3_TEXT_CHUNK_OVERLAP", "100")))
    embed_batch: int = field(default_factory=lambda: int(_env("UDS3_EMBED_BATCH", "32")))
    embedder: str = field(default_factory=lambda: _env("UDS3_EMBEDDER", "int8"))  # int8, fp32 or cuda
    # The model's threads; 0: one per CPU this process may run on (a replica pinned to a core: one).
    embed_threads: int = field(default_factory=lambda: int(_env("UDS3_EMBED_THREADS", "0")))
    # Scanned pages are read with Tesseract (services/vector/ocr.py): "off" turns it off.
    ocr: bool = field(default_factory=lambda: _env("UDS3_OCR", "on") != "off")
    ocr_langs: str = field(default_factory=lambda: _env("UDS3_OCR_LANGS", "deu+eng"))
    ocr_dpi: int = field(default_factory=lambda: int(_env("UDS3_OCR_DPI", "300")))
    # A page under an image with fewer characters than this in its text layer is read by OCR.
    ocr_min_chars: int = field(default_factory=lambda: int(_env("UDS3_OCR_MIN_CHARS", "100")))
    # A PDF of more pages is fanned out: page ranges of this size that any vector process embeds.
    vector_item_pages: int = field(default_factory=lambda: int(_env("UDS3_VECTOR_ITEM_PAGES", "32")))
    model_dir: Path = field(
        default_factory=lambda: Path(_env("UDS3_MODEL_DIR", str(_stack_dir() / "models" / "all-MiniLM-L6-v2")))
    )
    # Transient faults are retried with backoff until this deadline, then the step fails.
    step_deadline_s: float = field(default_factory=lambda: float(_env("UDS3_STEP_DEADLINE_S", "60")))
    retry_base_s: float = field(default_factory=lambda: float(_env("UDS3_RETRY_BASE_S", "0.2")))
    faults: str = field(default_factory=lambda: _env("UDS3_FAULTS", ""))
    # How long a crashed replica keeps its partitions before the group hands them on (the
    # heartbeat runs on the event loop, so a long handler in its thread does not count).
    session_timeout_ms: int = field(default_factory=lambda: int(_env("UDS3_KAFKA_SESSION_TIMEOUT_MS", "10000")))
    # A name for this replica, unique within its service (e.g. "0"): Kafka static group membership,
    # so a restarted replica takes its partitions back at once instead of after the session timeout.
    group_instance: str = field(default_factory=lambda: _env("UDS3_GROUP_INSTANCE", ""))
    # This process's Prometheus endpoint (0: none); `uds3 services up` sets one per replica.
    metrics_port: int = field(default_factory=lambda: int(_env("UDS3_METRICS_PORT", "0")))
    metrics_addr: str = field(default_factory=lambda: _env("UDS3_METRICS_ADDR", "127.0.0.1"))

    def s3_credentials(self) -> tuple[str | None, str | None]:
        """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (None: boto3's own chain, e.g. an instance
        role); the local stack's s3proxy identity only for an endpoint on this machine."""
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key is None and self.s3_endpoint and is_loopback_url(self.s3_endpoint):
            return "uds3", _env("UDS3_S3_SECRET", "uds3-local-s3")
        return key, secret

    def kafka(self, principal: str) -> dict[str, Any]:
        """aiokafka connection options as `principal` (a service name, "client" or "admin"):
        each process authenticates with its own SCRAM principal, whose ACLs say what it may
        write (services/operator/access.py). The password comes from UDS3_KAFKA_PASSWORD_<PRINCIPAL>;
        the default is the local stack's and is refused for a broker elsewhere."""
        password = os.environ.get(f"UDS3_KAFKA_PASSWORD_{principal.upper()}")
        if password is None:
            if not all(_is_loopback(server) for server in self.kafka_bootstrap.split(",")):
                raise RuntimeError(f"set UDS3_KAFKA_PASSWORD_{principal.upper()}: the local stack's "
                                   f"default credential is not used for {self.kafka_bootstrap}")
            password = f"uds3-local-{principal}"
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": principal,
            "sasl_plain_password": password,
        }
        if self.kafka_security_protocol == "SASL_SSL":
            options["ssl_context"] = ssl.create_default_context()
        return options

    def pg_dsn(self, user: str | None = None, password: str | None = None) -> str:
        user = user or self.pg_admin_user
        password = password or self.pg_admin_password
        return f"postgresql://{user}:{password}@{self.pg_host}:{self.pg_port}/{self.pg_database}"

    def service_role(self, service: str) -> tuple[str, str]:
        """The PostgreSQL role (and password) a service connects with: least privilege."""
        prefix = _env("UDS3_PG_ROLE_PREFIX", "uds3_")
        return f"{prefix}{service}", _env(f"UDS3_PG_PASSWORD_{service.upper()}", f"{service}-secret")
