"""vLLM argument building from tier settings."""

from __future__ import annotations

import json

from thrifty.config import parse_config
from thrifty.engine.launcher import vllm_args


def tier(engine: dict):
    return parse_config({"tiers": [{"name": "t", "model": "org/model", "aliases": ["gpt-4o"], "engine": engine,
                                    "price": {"gpu_hour": 2}}]}).tiers[0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_quantization_batching_kv_and_length() -> None:
    args = vllm_args(tier({"quantization": "awq", "max_num_seqs": 64, "max_num_batched_tokens": 4096,
                           "kv_cache_dtype": "fp8", "max_model_len": 8192, "tensor_parallel_size": 2}), port=9000)
    assert flag(args, "--quantization") == "awq"
    assert flag(args, "--max-num-seqs") == "64"
    assert flag(args, "--max-num-batched-tokens") == "4096"
    assert flag(args, "--kv-cache-dtype") == "fp8"
    assert flag(args, "--max-model-len") == "8192"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--port") == "9000"
    assert "--enable-prefix-caching" in args
    i = args.index("--served-model-name")
    assert args[i + 1 : i + 3] == ["org/model", "gpt-4o"]


def test_speculative_configs() -> None:
    ngram = vllm_args(tier({"speculative": {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}}), port=1)
    assert json.loads(flag(ngram, "--speculative-config")) == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}
    eagle = vllm_args(tier({"speculative": {"method": "eagle", "model": "yuhuili/EAGLE-LLaMA3-Instruct-8B"}}), port=1)
    assert json.loads(flag(eagle, "--speculative-config"))["model"] == "yuhuili/EAGLE-LLaMA3-Instruct-8B"


def test_prefix_caching_off_and_extra_args() -> None:
    args = vllm_args(tier({"enable_prefix_caching": False, "extra_args": ["--seed", "7"]}), port=1)
    assert "--no-enable-prefix-caching" in args
    assert args[-2:] == ["--seed", "7"]


def test_engine_profiles_lists_every_profile(capsys) -> None:
    """`thrifty engine profiles` prints the names a config's sim_profile/capacity_profile accept."""
    from thrifty.cli import main
    from thrifty.profiles import PROFILES

    assert main(["engine", "profiles"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(PROFILES)


def test_tool_call_parser_turns_on_auto_tool_choice() -> None:
    args = vllm_args(tier({"tool_call_parser": "hermes"}), port=1)
    assert args[args.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in args
    assert "--enable-auto-tool-choice" not in vllm_args(tier({}), port=1)
