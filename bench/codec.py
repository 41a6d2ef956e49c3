"""Figure 1: codec throughput, by running the existing `bench/codec_bench.py` as it is."""

from __future__ import annotations

import subprocess
import sys

from bench.env import Run
from bench.report import Section
from services.core.config import REPO_ROOT


def run(r: Run) -> Section:
    seconds = 2 if r.quick else 6
    argv = [sys.executable, "bench/codec_bench.py", "--seconds", str(seconds)]
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("|")]
    header, data = _cells(rows[0]), [_cells(line) for line in rows[2:]]
    s = Section("codec", r.command, r.quick, f"one event, best of 15 interleaved rounds over {seconds} s")
    s.table(header, data)
    s.notes.append(f"Run inside the harness as `.venv/bin/python bench/codec_bench.py --seconds {seconds}`.")
    for row in data:
        print(f"  codec: {row[0]} {row[2]} encode+decode/s ({row[1]} bytes)")
    return s


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]
