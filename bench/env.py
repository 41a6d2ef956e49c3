"""The bench's own isolated environment: topic prefix, database, chunk store, Milvus collection, logs.

`configure()` must run before anything imports `services.core.topics` (it reads the topic
prefix at import), so `bench.run` calls it first and imports the figure modules afterwards.
Service logs and pid files go to `.stack/bench/stack/services/`, apart from `uds3 services`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.core.config import REPO_ROOT

STACK_DIR = Path(os.environ.get("UDS3_STACK_DIR", REPO_ROOT / ".stack"))  # the native stack's (read at import)
BENCH_DIR = STACK_DIR / "bench"
FILES_DIR = BENCH_DIR / "files"  # generated inputs, kept across runs
MODEL_DIR = Path(os.environ.get("UDS3_MODEL_DIR", STACK_DIR / "models" / "all-MiniLM-L6-v2"))


@dataclass(frozen=True)
class BenchEnv:
    prefix: str  # this run's topics, consumer groups and PostgreSQL database

    @property
    def run_dir(self) -> Path:
        return BENCH_DIR / "runs" / self.prefix

    @property
    def chunk_store(self) -> Path:
        return self.run_dir / "chunks"

    def service_env(self) -> dict[str, str]:
        return {
            "UDS3_TOPIC_PREFIX": self.prefix,
            "UDS3_PG_DATABASE": self.prefix,
            "UDS3_CHUNK_STORE": str(self.chunk_store),
            "UDS3_MODEL_DIR": str(MODEL_DIR),
            "UDS3_STACK_DIR": str(BENCH_DIR / "stack"),
            "UDS3_FAULTS": "",  # never measure injected faults, whatever the calling shell exports
            "UDS3_ALLOWED_ROOT": str(BENCH_DIR),  # the generated inputs are read in place, never staged
        }

    def clean(self) -> None:
        """Removes this run's chunks (the generated inputs stay)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)


def configure() -> BenchEnv:
    """Sets this process's environment to the run's (before `services.core.topics` is imported)."""
    env = BenchEnv(prefix=f"bench{time.strftime('%Y%m%d%H%M%S')}")
    assert "services.core.topics" not in sys.modules, "configure() must run before topics is imported"
    os.environ.update(env.service_env())
    for d in (FILES_DIR, env.chunk_store):
        d.mkdir(parents=True, exist_ok=True)
    return env


@dataclass(frozen=True)
class Run:
    """What every figure gets: the isolated environment and the options of this run."""

    env: BenchEnv
    quick: bool
    command: str  # the exact command line, for the report
    sizes: dict[str, list[int]]  # --sizes overrides, e.g. {"upload": [30, 300]}

    def sizes_for(self, figure: str, full: list[int], quick: list[int]) -> list[int]:
        return self.sizes.get(figure) or (quick if self.quick else full)
