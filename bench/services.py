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
from services.core.saga import SERVICES
from services.processes import ServiceProcess, stop_all

ALL = list(SERVICES)


class ServiceDied(RuntimeError):
    pass


class Services:
    def __init__(self, names: list[str], env: dict[str, str], ready_timeout: float = 120) -> None:
        self.names, self.env, self.ready_timeout = names, env, ready_timeout
        self.procs: dict[str, ServiceProcess] = {}

    def __enter__(self) -> Services:
        try:
            offsets = {}
            for name in self.names:
                proc = ServiceProcess(name, env=self.env)
                offsets[name] = proc.log_path.stat().st_size if proc.log_path.exists() else 0
                self.procs[name] = proc.start()
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
