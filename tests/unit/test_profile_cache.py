"""The CPU profile measured on this machine: stored in the user cache, preferred when good, else the shipped one."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from thrifty import profile_cache
from thrifty.profiles import CPU_PROFILE, PROFILES, get_profile

SHIPPED = PROFILES[CPU_PROFILE]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("THRIFTY_PROFILES_DIR", str(tmp_path))
    return tmp_path


def test_a_stored_profile_is_what_the_simulator_uses(cache: Path) -> None:
    measured = dataclasses.replace(SHIPPED, step_overhead_s=0.004, prefill_token_s=0.0011, decode_token_s=0.002,
                                   weight_read_s=0.003, kv_blocks=400, hardware="2 CPU cores, measured here")
    path = profile_cache.save_profile(measured, {"points": []})
    assert path == cache / f"{CPU_PROFILE}.json" and json.loads(path.read_text())["measurement"] == {"points": []}
    assert get_profile(CPU_PROFILE) == measured
    assert get_profile("a100-llama3-8b") is PROFILES["a100-llama3-8b"]  # GPU profiles are never replaced


def test_no_stored_profile_falls_back_to_the_shipped_one_and_says_so(cache: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, "thrifty.profiles"):
        assert get_profile(CPU_PROFILE) is SHIPPED
    assert any("setup-cpu" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content, why", [
    ("{not json", "not JSON"),
    ('{"measurement": {}}', "no 'profile' object"),
    ('{"profile": {"name": "cpu-smollm2-135m", "bogus": 1}}', "unknown field 'bogus'"),
    ('{"profile": {"name": "cpu-smollm2-135m"}}', "missing"),
])
def test_a_bad_file_is_one_line_naming_it_and_the_shipped_profile_serves(cache: Path, caplog, content: str, why: str) -> None:
    path = cache / f"{CPU_PROFILE}.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        profile_cache.load_profile(path)
    assert str(path) in str(err.value) and why in str(err.value) and "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, "thrifty.profiles"):
        assert get_profile(CPU_PROFILE) is SHIPPED
    [record] = [r for r in caplog.records if str(path) in r.getMessage()]
    assert "\n" not in record.getMessage() and "shipped" in record.getMessage()


def test_a_stored_profile_with_bad_numbers_is_refused(cache: Path) -> None:
    fields = dataclasses.asdict(SHIPPED) | {"prefill_token_s": -1.0}
    path = cache / f"{CPU_PROFILE}.json"
    path.write_text(json.dumps({"profile": fields}))
    with pytest.raises(ValueError, match="prefill_token_s"):
        profile_cache.load_profile(path)
    assert get_profile(CPU_PROFILE) is SHIPPED
