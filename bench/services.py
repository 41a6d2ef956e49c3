"""Service processes started by the bench, each a fresh OS process (so VmHWM is per measurement).

    with Services(["uploader", "verifier"], env) as running:
        ...
        running.peak_rss_mb()   # read just before stopping

Stops everything it started on exit, failure included (children of a service too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from types import TracebackType

from bench import procfs
from services.core import topics
from services.core.saga import SERVICES
from services.processes import ServiceProcess, stop_all

ALL = list(SERVICES)


class ServiceDied(RuntimeError):
    pass


class Services:
    def __init__(self, names: list[str], env: dict[str, str], ready_timeout: float = 120,
                 pinned: dict[str, list[str]] | None = None) -> None:
        """`pinned`: a service's replicas, one per CPU list (taskset's), e.g. {"vector": ["0", "1"]};
        the second and later are named `<service>-<n>`."""
        self.env, self.ready_timeout = env, ready_timeout
        unpinned: list[str | None] = [None]
        each: dict[str, list[str | None]] = {name: [*(pinned or {}).get(name, [])] or unpinned for name in names}
        self.replicas = [(name, r, cpus) for name in names for r, cpus in enumerate(each[name])]
        self.names = [name if r == 0 else f"{name}-{r}" for name, r, _ in self.replicas]
        self.procs: dict[str, ServiceProcess] = {}
        self.offsets: dict[str, int] = {}

    def __enter__(self) -> Services:
        try:
            offsets = {}
            for key, (name, replica, cpus) in zip(self.names, self.replicas, strict=True):
                proc = ServiceProcess(name, replica, env=self.env, cpus=cpus)
                offsets[key] = proc.log_path.stat().st_size if proc.log_path.exists() else 0
                self.procs[key] = proc.start()
            self.offsets = offsets
            self._wait_ready(offsets)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            print(self.logs())
        self.stop()

    def _wait_ready(self, offsets: dict[str, int]) -> None:
        """Until every service logged `started` (its store, model and consumer are up)."""
        deadline = time.monotonic() + self.ready_timeout
        waiting = set(self.names)
        while waiting:
            for name in list(waiting):
                proc = self.procs[name]
                if not proc.alive:
                    raise ServiceDied(f"{name} exited at start:\n{proc.log_tail()}")
                with open(proc.log_path, "rb") as f:
                    f.seek(offsets[name])
                    if b" started group=" in f.read():
                        waiting.discard(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"not started after {self.ready_timeout}s: {sorted(waiting)}")
            time.sleep(0.2)

    def wait_for_line(self, name: str, text: str, timeout: float = 90) -> None:
        """Until the process logged `text` since it started (e.g. its share of a group's partitions)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.procs[name].log_path, "rb") as f:
                f.seek(self.offsets[name])
                if text.encode() in f.read():
                    return
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not log {text!r} in {timeout}s:\n{self.procs[name].log_tail()}")
            time.sleep(0.2)

    def wait_for_workers(self, service: str) -> None:
        """Until the service's work group has settled: each of its processes holds its share."""
        mine = [key for key in self.procs if key == service or key.startswith(f"{service}-")]
        for key in mine:
            self.wait_for_line(key, f"work assigned partitions={topics.WORK_PARTITIONS // len(mine)}")

    def pid(self, name: str) -> int:
        proc = self.procs[name].proc
        assert proc is not None
        return proc.pid

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if not proc.alive:
                raise ServiceDied(f"{name} died:\n{proc.log_tail()}")

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM of each service process: its peak RSS since it started."""
        return {name: procfs.peak_rss_mb(self.pid(name)) for name in self.procs}

    def cpu_seconds(self) -> dict[str, float]:
        return {name: procfs.cpu_seconds(procfs.with_children(self.pid(name))) for name in self.procs}

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {n}\n{p.log_tail(lines)}" for n, p in self.procs.items())

    def stop(self) -> None:
        started = [p for p in self.procs.values() if p.proc is not None]
        descendants = [c for p in started if p.alive for c in procfs.with_children(p.proc.pid)[1:]]  # type: ignore[union-attr]
        stop_all(started)
        for pid in descendants:  # only processes our services started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()
