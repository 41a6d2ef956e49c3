"""Figure 6: memory of the stack's servers (Kafka, Neo4j, PostgreSQL, milvus-lite), and their pids for CPU figures."""

from __future__ import annotations

from pathlib import Path

from bench import procfs
from bench.env import STACK_DIR, Run
from bench.report import Section


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def server_pids() -> dict[str, list[int]]:
    """Each server's processes (PostgreSQL: the postmaster and all its backends)."""
    mains = {
        "kafka": _pid(STACK_DIR / "run" / "kafka.pid"),
        "neo4j": _pid(STACK_DIR / "run" / "neo4j.pid"),
        "postgresql": _pid(STACK_DIR / "data" / "postgres" / "postmaster.pid"),
        "milvus-lite": _pid(STACK_DIR / "run" / "milvus.pid"),
    }
    return {name: procfs.with_children(pid) for name, pid in mains.items() if pid is not None}


def server_cpu() -> dict[str, float]:
    return {name: procfs.cpu_seconds(pids) for name, pids in server_pids().items()}


def run(r: Run) -> Section:
    s = Section("stack", r.command, r.quick, "the running native stack (`infra/stack.sh`)")
    rows = []
    for name, pids in server_pids().items():
        rss = sum(procfs.rss_mb(p) for p in pids)
        pss = sum(procfs.pss_mb(p) for p in pids)
        rows.append([name, str(len(pids)), f"{rss:.0f}", f"{pss:.0f}", f"{procfs.peak_rss_mb(pids[0]):.0f}"])
        print(f"  {name}: {len(pids)} processes, RSS {rss:.0f} MB, PSS {pss:.0f} MB", flush=True)
    s.table(["server", "processes", "RSS MB (sum)", "PSS MB (sum)", "main process peak RSS MB"], rows)
    s.notes += [
        "PSS splits shared pages (PostgreSQL's shared buffers) between the processes that map them, so the "
        "PSS sum is the server's real footprint; the RSS sum counts shared pages once per process.",
        "Heap limits are set in infra/stack.sh (Kafka -Xmx1G, Neo4j -Xmx768m + 256 MB page cache).",
    ]
    return s
