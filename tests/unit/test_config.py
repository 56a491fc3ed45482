"""Config validation: every bad file fails with one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from thrifty.config import ConfigError, baseline_tier, load_config, parse_config

DEMO = Path(__file__).resolve().parents[2] / "thrifty" / "configs" / "local-cpu.yaml"


def good() -> dict:
    return {
        "tiers": [
            {"name": "small", "model": "m-small", "aliases": ["gpt-4o-mini"], "price": {"gpu_hour": 1.0}},
            {"name": "large", "model": "m-large", "aliases": ["gpt-4o"], "price": {"input_per_1m": 2.5, "output_per_1m": 10}},
        ]
    }


def error_for(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_demo_config_loads() -> None:
    config = load_config(DEMO)
    assert [t.name for t in config.tiers] == ["small", "large"]
    assert config.tier_for_model("gpt-4o").name == "large"
    assert baseline_tier(config).name == "large"


def test_good_config_defaults() -> None:
    config = parse_config(good())
    assert config.listen.port == 8000
    assert config.tier("small").price.self_hosted
    assert not config.tier("large").price.self_hosted


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d["tiers"][0].update(price={"gpu_hour": "cheap"}), "tiers[0].price.gpu_hour", "number"),
        (lambda d: d["tiers"][0].update(price={"gpu_hour": -1}), "tiers[0].price.gpu_hour", "greater than or equal to 0"),
        (lambda d: d["tiers"][1].update(price={"input_per_1m": -2, "output_per_1m": 1}), "tiers[1].price.input_per_1m", "greater"),
        (lambda d: d.update(colour="blue"), "colour", "unknown key"),
        (lambda d: d["tiers"][0].update(flavour=1), "tiers[0].flavour", "unknown key"),
        (lambda d: d.update(tiers=[]), "tiers", "at least 1"),
        (lambda d: d.pop("tiers"), "tiers", "required"),
        (lambda d: d["tiers"][0].pop("model"), "tiers[0].model", "required"),
        (lambda d: d["tiers"][0].update(name="Bad Name"), "tiers[0].name", "pattern"),
        (lambda d: d["tiers"][0].update(replicas={"min": 3, "max": 1}), "tiers[0].replicas", "above max"),
        (lambda d: d["tiers"][0].update(engine={"quantization": "int3"}), "tiers[0].engine.quantization", "awq"),
        (lambda d: d["tiers"][0].update(engine={"speculative": {"method": "eagle"}}), "tiers[0].engine.speculative", "needs a model"),
        (lambda d: d.update(baseline_tier="huge"), "(top level)", "not a tier"),
        (lambda d: d["tiers"][1].update(aliases=["gpt-4o-mini"]), "(top level)", "served by tiers"),
        (lambda d: d.update(slo={"ttft_p95_ms": 0}), "slo.ttft_p95_ms", "greater than 0"),
        (lambda d: d.update(slo={"ttft_ms_per_1k_prompt_tokens": -1}), "slo.ttft_ms_per_1k_prompt_tokens", "greater than or equal to 0"),
        (lambda d: d.update(slo={"ttft_ms_per_1k_prompt_tokens": "fast"}), "slo.ttft_ms_per_1k_prompt_tokens", "valid number"),
        (lambda d: d["tiers"][0].update(price={}), "tiers[0].price", "gpu_hour"),
        (lambda d: d["tiers"][0].update(engine={"sim_profile": "tpu-x"}), "tiers[0].engine.sim_profile", "known: a100-llama3-8b"),
        (lambda d: d["tiers"][1].update(engine={"capacity_profile": "h200"}), "tiers[1].engine.capacity_profile", "unknown performance profile"),
    ],
)
def test_bad_config_names_the_field(mutate, field: str, reason: str) -> None:
    data = good()
    mutate(data)
    message = error_for(data)
    assert f"cfg.yaml: {field}:" in message
    assert reason in message


def test_not_a_mapping() -> None:
    assert "expected a mapping" in error_for([1, 2])


def test_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [\n  - name: a\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_config(bad)


def test_cli_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = good()
    data["tiers"][0]["price"] = {"gpu_hour": -3}
    bad.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "thrifty.cli", "engine", "args", "small", "--config", str(bad), "--no-validate"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "tiers[0].price.gpu_hour" in proc.stderr
    assert "Traceback" not in proc.stderr
