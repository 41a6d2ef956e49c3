"""The six services as separate OS processes against the real stack (the `services` fixture)."""

from __future__ import annotations

from services.processes import ServiceProcess, start_all, stop_all


class Services:
    """The running services of this test run; tests may kill and restart them."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[str, ServiceProcess] = {p.service: p for p in start_all(env)}

    def restart(self, name: str, kill: bool = True) -> None:
        proc = self.procs[name]
        proc.kill() if kill else proc.stop()
        self.procs[name] = ServiceProcess(name, env=self.env).start()

    def stop(self) -> None:
        stop_all(list(self.procs.values()))

    def start_stopped(self) -> None:
        for name, p in list(self.procs.items()):
            if not p.alive:
                self.procs[name] = ServiceProcess(name, env=self.env).start()

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log_tail(15)}" for n, p in self.procs.items())
