"""G1/G2/G3 under SIGKILL: the chaos runner, short (10 sagas, 20 kills; `make chaos` runs 50/200).

It runs as its own process (`python -m tests.e2e.chaos`): it starts its own six services with
its own topic prefix, database, chunk store and Milvus file, so it never meets this session's
services. (Its database once was this session's: the session's relays then published, and so
took away, chaos events; sagas were lost and StepLogs written by two processes.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.config import REPO_ROOT, Settings

pytestmark = pytest.mark.stack


def test_short_chaos_run_loses_nothing_and_leaves_no_half_writes(stack: Settings, tmp_path: Path) -> None:
    figures = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "tests.e2e.chaos", "--sagas", "10", "--kills", "20", "--settle", "150",
         "--json", str(figures)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    result = json.loads(figures.read_text())
    assert result["sagas"] == 10 and result["kills"] == 20
    assert result["lost"] == 0 and result["violations"] == 0, run.stdout[-4000:]
    assert result["unexpected"] == 0 and result["duplicate_effects"] == 0, run.stdout[-4000:]
    # the mix: three good documents and one flaky one complete, one failure per step compensates
    assert (result["completed"], result["compensated"]) == (4, 6)
