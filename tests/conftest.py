"""Shared fixtures: the native stack is started once per run (never per test)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.config import REPO_ROOT, Settings

# One topic prefix per test run: the run's services, clients and tracking positions never
# see another run's messages. Set before any module reads it.
os.environ.setdefault("UDS3_TOPIC_PREFIX", f"t{uuid.uuid4().hex[:8]}")


def _stack_is_up() -> bool:
    return (
        subprocess.run(
            ["bash", "infra/stack.sh", "status"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.count("running")
        >= 3
    )


@pytest.fixture(scope="session")
def stack() -> Settings:
    """The real Kafka, PostgreSQL and Neo4j from infra/, provisioned, with this run's topics."""
    if not _stack_is_up():
        subprocess.run(["bash", "infra/stack.sh", "up"], cwd=REPO_ROOT, check=True)
    from services.core import topics
    from services.core.provision import provision

    settings = Settings()
    provision(settings)
    asyncio.run(topics.ensure_topics(settings.kafka_bootstrap))
    return settings


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture
def doc_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
def service_env(run_dir: Path) -> dict[str, str]:
    """Environment of the service processes this run starts: their own chunk store and Milvus file."""
    return {
        "UDS3_TOPIC_PREFIX": os.environ["UDS3_TOPIC_PREFIX"],
        "UDS3_CHUNK_STORE": str(run_dir / "chunks"),
        "UDS3_MILVUS_URI": str(run_dir / "milvus" / "vectors.db"),
        "UDS3_ALLOWED_ROOT": str(run_dir),
        "UDS3_RETRY_BASE_S": "0.1",
    }


@pytest.fixture(scope="session")
def env_applied(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The test process sees the same settings as the services it talks to."""
    old = {k: os.environ.get(k) for k in service_env}
    os.environ.update(service_env)
    yield service_env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
