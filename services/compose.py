"""The composition root: each service's step, built from its row of the saga table and its
folder, and the runtime that runs it (`python -m services.<service>` calls `main`)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import importlib
import signal
import sys

from services.core import logs, tracing
from services.core.config import Settings
from services.core.runtime import Runtime
from services.core.saga import BY_SERVICE
from services.core.step import Step


def step_class(service: str) -> type[Step]:
    """The `Step` subclass in `services/<service>/step.py` (the service name comes from the saga
    table, never from input)."""
    if service not in BY_SERVICE:
        raise KeyError(f"{service!r} is not a service of the saga (services/core/saga.py)")
    module = importlib.import_module(f"services.{service}.step")
    found = [v for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, Step) and getattr(v, "service", None) == service]
    if len(found) != 1:
        raise LookupError(f"services/{service}/step.py must define one Step with service = {service!r}")
    return found[0]


def build_step(service: str, settings: Settings) -> Step:
    """The service's step with its adapters (its bootstrap, `Step.from_settings`)."""
    return step_class(service).from_settings(settings)


def return_large_buffers() -> None:
    """Chunk-sized buffers (5 MiB, several threads) come from mmap and go back to the system when
    freed. glibc raises its mmap threshold after the first such free, and later ones then stay in
    the heap: the uploader's peak RSS grew by 21 MB from a 30 MiB to a 300 MiB file with four
    chunks in flight, and by 0.6 MB with the threshold fixed (docs/benchmarks.md, upload)."""
    libc = ctypes.util.find_library("c")
    if libc and sys.platform == "linux":
        ctypes.CDLL(libc).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB, no longer adjusted


def main(service: str) -> None:
    """Entry point of `python -m services.<service>`."""
    return_large_buffers()
    # A stop asked for while the step is still being built (the vector step loads its model for
    # seconds) is a clean exit: nothing has been consumed yet. The runtime then takes SIGTERM over.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logs.configure(service)
    tracing.setup(service)
    settings = Settings()
    asyncio.run(Runtime(build_step(service, settings), settings).run())
