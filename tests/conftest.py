"""Shared fixtures: the native stack is started once per run (never per test).

Each test run is isolated from any other run on the same stack: its own topic prefix and
consumer groups, its own PostgreSQL database (event stores, tables), its own chunk store
and milvus-lite file. The settings are exported at import, before any module reads them,
so the test process and the service processes it starts see the same ones.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services.core.config import REPO_ROOT, Settings, isolated_env

if TYPE_CHECKING:
    from tests.running import Services

RUN_ID = f"t{uuid.uuid4().hex[:8]}"
RUN_DIR = Path(tempfile.mkdtemp(prefix=f"uds3-{RUN_ID}-"))
RUN_ENV = {
    **isolated_env(RUN_ID, RUN_DIR),
    "UDS3_SERVICES_DIR": str(RUN_DIR / "services"),
    "UDS3_RETRY_BASE_S": "0.1",
    # The session's services serve /metrics from here (tests/e2e/test_metrics.py); chaos and
    # bench runs have none (isolated_env), so they never meet these ports.
    "UDS3_METRICS_BASE_PORT": os.environ.get("UDS3_TEST_METRICS_BASE_PORT", "19600"),
    "UDS3_TRACE_DIR": str(RUN_DIR / "traces"),  # the session's services' spans (tests/e2e/test_tracing.py)
    # Fault injection by title (tests/e2e/test_failures.py): no other test's titles match.
    "UDS3_FAULTS": (
        "uploader:permanent@fail-upload,verifier:permanent@fail-integrity,security:permanent@fail-security,"
        "vector:permanent@fail-vectors,graph:permanent@fail-graph,relational:permanent@fail-relational,"
        "graph:transient:2@flaky-graph,graph:undo-permanent@stuck-undo,"
        "uploader:mid-permanent@fail-mid-upload,vector:mid-permanent@fail-mid-vectors,graph:mid-permanent@fail-mid-graph"
    ),
}
os.environ.update(RUN_ENV)


def _stack_is_up() -> bool:
    return (
        subprocess.run(
            ["bash", "infra/stack.sh", "status"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.count("running")
        >= 5
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """The real Kafka, PostgreSQL and Neo4j from infra/, with this run's database and topics."""
    if not _stack_is_up():
        subprocess.run(["bash", "infra/stack.sh", "up"], cwd=REPO_ROOT, check=True)
    from services.core import topics
    from services.operator import access
    from services.operator.provision import create_database, drop_database, drop_shared_stores

    settings = Settings()
    create_database(settings)
    asyncio.run(access.provision_kafka(settings))
    yield settings
    drop_database(settings)
    drop_shared_stores(settings)
    asyncio.run(topics.delete_topics(settings))  # also the modules' `<RUN_ID>-*` topics


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """This run's folder (outside pytest's own temp rotation, which other runs may prune)."""
    return RUN_DIR


@pytest.fixture
def doc_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    """Environment of the service processes this run starts."""
    return dict(RUN_ENV)


@pytest.fixture(scope="session")
def env_applied(service_env: dict[str, str]) -> dict[str, str]:
    """The test process already runs with the same settings as its services."""
    return service_env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed embedding test names what decides the int8 kernels: onnxruntime and the CPU's SIMD flags."""
    report: pytest.TestReport = yield
    if report.failed and "embedding" in item.nodeid:
        from services.vector.embedding import runtime_description

        report.sections.append(("CPU and onnxruntime", runtime_description()))
    return report


@pytest.fixture(scope="session")
def services(stack: Settings, env_applied: dict[str, str]) -> Iterator[Services]:
    """The six services as separate OS processes (end-to-end and security tests share them)."""
    from tests.running import Services  # not at the top: the run's environment must be set first

    running = Services(env_applied)
    yield running
    running.stop()
