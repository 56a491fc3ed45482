"""Unit-test fixtures: the simulator's profiles never depend on what this machine has measured."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_measured_profiles(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the measured-profile cache (thrifty/profile_cache.py) at an empty folder, so the
    CPU profile is the shipped one whatever `thrifty engine setup-cpu` stored on this machine."""
    monkeypatch.setenv("THRIFTY_PROFILES_DIR", str(tmp_path_factory.mktemp("profiles")))
