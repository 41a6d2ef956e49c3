"""G1/G2/G3 under SIGKILL: the chaos runner, short (10 sagas, 20 kills; `make chaos` runs 50/200),
with one process per service and with replicas.

It runs as its own process (`python -m tests.e2e.chaos`): it starts its own six services with
its own topic prefix, database, chunk store and Milvus collection, so it never meets this session's
services. (Its database once was this session's: the session's relays then published, and so
took away, chaos events; sagas were lost and StepLogs written by two processes.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.config import REPO_ROOT, Settings
from services.core.saga import SERVICES

pytestmark = pytest.mark.stack


def chaos(figures: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    run = subprocess.run(
        [sys.executable, "-m", "tests.e2e.chaos", *args, "--settle", "150", "--json", str(figures)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=420, env={**os.environ, **(env or {})},
    )
    figures_written = json.loads(figures.read_text()) if figures.exists() else {}
    seed = f"seed {figures_written.get('seed')} (rerun: python -m tests.e2e.chaos --seed ...)\n"
    assert run.returncode == 0, seed + run.stdout[-4000:] + run.stderr[-2000:]
    return {**figures_written, "stdout": seed + run.stdout[-4000:]}


def test_short_chaos_run_loses_nothing_and_leaves_no_half_writes(stack: Settings, tmp_path: Path) -> None:
    result = chaos(tmp_path / "chaos.json", "--sagas", "10", "--kills", "20")
    assert result["sagas"] == 10 and result["kills"] == 20
    # half the kills are aimed at a service that just wrote to its log: some must land mid-work
    assert result["busy_kills"] >= 2, "the kills met no service at work: " + result["stdout"]
    assert result["crashes"] == 0, "a service died by itself: " + result["stdout"]
    assert result["lost"] == 0 and result["violations"] == 0, result["stdout"]
    assert result["unexpected"] == 0 and result["duplicate_effects"] == 0, result["stdout"]
    # the mix: three good documents and one flaky one complete, one failure per step compensates
    assert (result["completed"], result["compensated"]) == (4, 6)


def test_replicas_share_the_work_survive_kills_and_hand_partitions_over(stack: Settings, tmp_path: Path) -> None:
    """Two processes of every service in one consumer group each, meeting through the object
    store (the stack's s3proxy) as they would on several machines; every service has one of its
    replicas SIGKILLed mid-run; a third replica of every service joins a third of the way in and
    the first one of each is stopped two thirds in: nothing lost, nothing done twice."""
    result = chaos(tmp_path / "replicas.json", "--sagas", "10", "--kills", "12", "--replicas", "2", "--scale",
                   "--chunk-store", "s3")
    assert result["replicas"] == 2 and result["killed_services"] == sorted(SERVICES), result["stdout"]
    assert result["busy_kills"] >= 2, "the kills met no service at work: " + result["stdout"]
    assert result["added_took_partitions"] == len(SERVICES), "an added replica got no partitions: " + result["stdout"]
    assert result["retired"] >= 4 and result["retired_cleanly"] == result["retired"], result["stdout"]
    assert result["lost"] == 0 and result["violations"] == 0 and result["crashes"] == 0, result["stdout"]
    assert result["unexpected"] == 0 and result["duplicate_effects"] == 0, result["stdout"]
    assert (result["completed"], result["compensated"]) == (4, 6)


def test_a_store_restart_mid_run_is_retried_and_nothing_is_compensated(stack: Settings, tmp_path: Path) -> None:
    """PostgreSQL stopped for real (connections cut, new ones refused) and Neo4j frozen, while
    good documents are at work: transient, so every saga completes and none compensates."""
    # a few kills too: a service restarted during the outage must wait for its stores, not exit
    result = chaos(tmp_path / "outage.json", "--sagas", "8", "--kills", "4", "--outage", "--outage-mode",
                   "restart", "--outage-seconds", "6")
    assert "postgres stopped and restarted" in result["outage"], result["stdout"]
    assert result["in_flight_at_outage"] > 0, "the outage met no saga in progress: " + result["stdout"]
    assert (result["completed"], result["compensated"], result["lost"]) == (8, 0, 0), result["stdout"]
    assert result["violations"] == 0 and result["unexpected"] == 0, result["stdout"]
    assert result["crashes"] == 0, "a service died instead of waiting for its stores: " + result["stdout"]
