"""Session fixtures for the real parts (see tests/realparts.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.realparts import RealEngine, start_real_engine


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealEngine]:
    """One real vLLM CPU engine (SmolLM2-135M) shared by the whole session."""
    yield from start_real_engine(tmp_path_factory.mktemp("vllm"))
