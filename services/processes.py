"""Runs the six services as separate OS processes (for local use, the demo and the e2e tests).

In production each service is deployed on its own (`python -m services.<name>`, several
replicas per consumer group); this module only saves typing on one machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.core.config import REPO_ROOT
from services.core.saga import SERVICES

# `uds3 services up` gives each replica a /metrics port from here (0: none): see metrics_port().
DEFAULT_METRICS_BASE_PORT = 19400


def metrics_port(service: str, replica: int, base: int) -> int:
    """Replica r of the i-th service (saga order) listens on base + i + 6r."""
    return base + SERVICES.index(service) + len(SERVICES) * replica if base else 0


def metrics_base(env: dict[str, str]) -> int:
    return int(env.get("UDS3_METRICS_BASE_PORT", DEFAULT_METRICS_BASE_PORT))


def run_dir() -> Path:
    """Where service logs and pid files go (UDS3_SERVICES_DIR, default .stack/services)."""
    default = Path(os.environ.get("UDS3_STACK_DIR", REPO_ROOT / ".stack")) / "services"
    d = Path(os.environ.get("UDS3_SERVICES_DIR", default))
    d.mkdir(parents=True, exist_ok=True)
    return d


class ServiceProcess:
    """One replica of one service: started, killed (SIGKILL) or stopped (SIGTERM)."""

    def __init__(self, service: str, replica: int = 0, env: dict[str, str] | None = None,
                 cpus: str | None = None) -> None:
        """`cpus`: pin it to these CPUs (taskset's list, e.g. "0" or "0-3"); its model then runs
        one thread per CPU it has."""
        self.service, self.replica, self.cpus = service, replica, cpus
        # Dynamic group membership by default: a restarted replica waits out its killed
        # predecessor's session timeout (10 s). UDS3_GROUP_INSTANCE opts into static membership
        # (instant takeover), which we saw stall after many kills in seconds (docs/operating.md).
        self.env = {**os.environ, **(env or {})}
        if self.env.get("UDS3_GROUP_INSTANCE"):  # static membership: one instance id per replica
            self.env["UDS3_GROUP_INSTANCE"] = f"{self.env['UDS3_GROUP_INSTANCE']}-{replica}"
        self.metrics_port = metrics_port(service, replica, metrics_base(self.env))
        self.env["UDS3_METRICS_PORT"] = str(self.metrics_port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir() / f"{service}-{replica}.log"
        self.pid_path = run_dir() / f"{service}-{replica}.pid"

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            pin = ["taskset", "-c", self.cpus] if self.cpus else []
            self.proc = subprocess.Popen(
                [*pin, sys.executable, "-m", f"services.{self.service}"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_path.write_text(str(self.proc.pid))
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash the guarantees are about."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.pid_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_all(env: dict[str, str] | None = None, replicas: int = 1) -> list[ServiceProcess]:
    """`replicas` processes of every service: each service's replicas share its consumer group."""
    return [ServiceProcess(s, r, env=env).start() for s in SERVICES for r in range(replicas)]


def stop_all(processes: list[ServiceProcess]) -> None:
    for p in processes:
        if p.alive and p.proc is not None:
            p.proc.terminate()
    for p in processes:
        p.stop()


def stop_detached() -> int:
    """Stops services started by another process (`uds3 services down`), via their pid files."""
    stopped = 0
    for pid_file in run_dir().glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            stopped += 1
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    time.sleep(0.5)
    return stopped


def running_detached() -> dict[str, int]:
    found = {}
    for pid_file in run_dir().glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            found[pid_file.stem] = pid
        except (ProcessLookupError, ValueError):
            pid_file.unlink(missing_ok=True)
    return found
