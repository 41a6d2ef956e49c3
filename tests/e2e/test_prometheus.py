"""The stack's optional Prometheus profile (`make prometheus`: Debian's package) scrapes every
service of a run: each target is up and the services' own counters arrive in it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from services.core.config import REPO_ROOT
from tests.e2e.test_console import free_port
from tests.running import Services

pytestmark = pytest.mark.stack


def query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
    return list(json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"])


def test_prometheus_scrapes_every_service(services: Services, run_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, **services.env, "UDS3_PROMETHEUS_PORT": str(port), "UDS3_STACK_DIR": str(run_dir)}
    subprocess.run(["bash", "infra/prometheus.sh", "up"], cwd=REPO_ROOT, env=env, check=True, timeout=120)
    try:
        base = int(services.env["UDS3_METRICS_BASE_PORT"])
        wanted = {f"127.0.0.1:{base + i}" for i in range(6)}  # replica 0 of the six services
        deadline = time.monotonic() + 60
        while True:
            up = {str(r["metric"]["instance"]) for r in query(port, "up == 1")}  # type: ignore[index]
            if wanted <= up or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert wanted <= up, up
        ours = {str(r["metric"]["instance"]) for r in query(port, "uds3_sagas_in_flight")}  # type: ignore[index]
        assert wanted <= ours, ours  # each service's own metrics, not only the scrape's
    finally:
        subprocess.run(["bash", "infra/prometheus.sh", "down"], cwd=REPO_ROOT, env=env, check=False, timeout=30)
