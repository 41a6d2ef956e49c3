"""Memory and CPU of processes, read from outside (/proc and psutil): no service changes needed."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

MB = 2**20


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    return status_kb(pid, "VmHWM") * 1024 / MB


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") * 1024 / MB


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages split between their users (sums add up)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the given processes (0 for those that are gone), with that of
    their children that ended (PostgreSQL's backends come and go: a closed one's time would be lost)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def with_children(pid: int) -> list[int]:
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mem = psutil.virtual_memory()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "load": load,
        "memory": f"{mem.total / 2**30:.1f} GiB ({mem.available / 2**30:.1f} GiB available)",
    }
