"""Fault injection for tests, chaos runs and the demo; off unless UDS3_FAULTS is set.

UDS3_FAULTS is a comma-separated list of `service:kind[:times]@match`, where kind is
`permanent`, `transient` (fails `times` attempts, default 3), `hang` (sleeps `times`
seconds), `undo-permanent` or `undo-transient`, and `match` is a substring of the
document's title or id (`*` matches every document).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.core.errors import PermanentError, TransientError


@dataclass(frozen=True)
class Fault:
    service: str
    kind: str
    times: int
    match: str


def parse(spec: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, match = item.partition("@")
        service, kind, *rest = target.split(":")
        times = int(rest[0]) if rest else 3
        faults.append(Fault(service, kind, times, match or "*"))
    return faults


class FaultInjector:
    def __init__(self, service: str, spec: str) -> None:
        self.faults = [f for f in parse(spec) if f.service == service]
        self.attempts: dict[tuple[str, str], int] = {}

    def maybe_fail(self, phase: str, document_id: str, title: str) -> None:
        """Raise the configured fault for this phase ("forward" or "undo"), if any."""
        for f in self.faults:
            if not _matches(f.match, document_id, title):
                continue
            kind = f.kind.removeprefix("undo-")
            if (phase == "undo") != f.kind.startswith("undo-"):
                continue
            if kind == "permanent":
                raise PermanentError(f"injected permanent fault in {f.service} ({phase})")
            if kind == "transient":
                key = (document_id, f.kind)
                self.attempts[key] = self.attempts.get(key, 0) + 1
                if self.attempts[key] <= f.times:
                    raise TransientError(f"injected transient fault {self.attempts[key]}/{f.times}")
            if kind == "hang":
                time.sleep(f.times)


def _matches(match: str, document_id: str, title: str) -> bool:
    return match == "*" or match in document_id or match in (title or "")
