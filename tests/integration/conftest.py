"""Fixtures the vector step's tests share; each module brings its own `settings`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.core.config import Settings
from services.vector.adapters import VectorIndex
from services.vector.step import VectorStep


@pytest.fixture(scope="module")
def step(settings: Settings) -> Iterator[VectorStep]:
    """One vector step (the model takes a few seconds to load) with the module's own collection."""
    s = VectorStep.from_settings(settings)
    s.start()
    yield s
    assert isinstance(s.vectors, VectorIndex)
    s.vectors.drop()
    s.stop()
