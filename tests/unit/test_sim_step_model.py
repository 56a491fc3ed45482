"""The simulator's step model: the roofline shape, the H200 fit it ships, and the profiles derived from it."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from tests.realparts import data_file
from thrifty.bench import sim_calibration
from thrifty.profiles import A100, H100, H200, L4, PROFILES, GpuProfile
from thrifty.sim.model import SimReplica, SimRequest
from thrifty.sim.step_fit import StepPoint, fit_step_model, load_step_time_json

H200_8B = PROFILES["h200-llama3-8b"]
GPU_PROFILES = sorted(n for n, p in PROFILES.items() if p.weight_read_s > 0)


def test_a_prefill_pays_the_weight_read_once_under_its_compute() -> None:
    p = H200_8B
    compute = 512 * p.prefill_token_s
    assert compute > p.weight_read_s  # 512 tokens are compute bound on an H200
    assert p.step_time(512, 0, 0) == pytest.approx(p.step_overhead_s + compute)
    assert p.step_time(512, 0, 0) < p.step_overhead_s + p.weight_read_s + compute  # not additive
    # a lone decode step is memory bound: the weight read, not the (tiny) compute, sets it
    assert p.decode_step_time(1, 0) == pytest.approx(p.fixed_step_s + p.decode_token_s)
    # a mixed step: the decode tokens ride on the prefill's compute, their KV read adds
    mixed = p.step_time(1024, 64, 64 * 2048)
    assert mixed == pytest.approx(p.step_overhead_s + 1088 * p.prefill_token_s + 64 * p.decode_token_s
                                  + 64 * 2048 * p.context_token_s)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_step_time_grows_with_batch_context_and_prompt(name: str) -> None:
    p = PROFILES[name]
    batches = [p.decode_step_time(b, b * 1000) for b in (1, 2, 8, 32, 128, 256)]
    assert batches == sorted(batches) and batches[-1] > batches[0]
    contexts = [p.decode_step_time(8, 8 * c) for c in (0, 512, 2048, 8192)]
    assert contexts == sorted(contexts) and contexts[-1] > contexts[0]
    prompts = [p.prefill_time(n) for n in (1, 64, 512, 4096, 20_000)]
    assert prompts == sorted(prompts) and prompts[-1] > prompts[0]


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_decode_is_memory_bound_and_prefill_compute_bound(name: str) -> None:
    p = PROFILES[name]
    assert p.decode_step_time(8, 8 * 1000) < 1.5 * p.decode_step_time(1, 1000)  # batching small decodes is cheap
    assert p.prefill_time(4000) / 4000 < 1.2 * p.prefill_token_s  # long prompts: cost per token


def test_derived_profiles_scale_by_bandwidth_and_flops() -> None:
    a100, fp8 = PROFILES["a100-llama3-8b"], PROFILES["a100-llama3-8b-fp8"]
    bw = H200.memory_bytes_per_s / A100.memory_bytes_per_s
    assert a100.weight_read_s == pytest.approx(H200_8B.weight_read_s * bw)
    assert a100.context_token_s == pytest.approx(H200_8B.context_token_s * bw)
    assert a100.prefill_token_s == pytest.approx(H200_8B.prefill_token_s * H200.bf16_flops / A100.bf16_flops)
    assert 0.5 < fp8.weight_read_s / a100.weight_read_s < 0.6  # FP8 decoder weights, 16-bit lm_head
    assert fp8.prefill_token_s == a100.prefill_token_s  # W8A16: no FP8 tensor cores on an A100
    tp4, tp2 = PROFILES["h100-llama3-70b-tp4"], PROFILES["h100-llama3-70b-fp8-tp2"]
    assert tp2.prefill_token_s == pytest.approx(tp4.prefill_token_s * 2 * H100.bf16_flops / H100.fp8_flops)
    assert tp2.context_token_s == pytest.approx(2 * tp4.context_token_s)  # BF16 KV over half the GPUs
    assert PROFILES["l4-llama3-8b-awq"].weight_read_s > H200_8B.weight_read_s * H200.memory_bytes_per_s / L4.memory_bytes_per_s / 4


def test_the_fit_recovers_known_constants() -> None:
    truth = GpuProfile(name="t", model="m", hardware="h", step_overhead_s=0.002, weight_read_s=0.005,
                       prefill_token_s=3e-5, decode_token_s=8e-6, context_token_s=4e-8, prefill_pair_s=1e-9, kv_blocks=10)
    shapes = [(n, 0, 0) for n in (64, 256, 1024, 4096)] + [(0, b, b * c) for b in (1, 16, 64, 256) for c in (512, 2048)]
    shapes += [(512, 64, 64 * 2048), (2048, 32, 32 * 512)]
    points = [StepPoint(str(s), *s, truth.step_time(*s, s[0] ** 2 / 2), s[0] ** 2 / 2) for s in shapes]
    fit = fit_step_model(points)
    assert fit.max_rel_error < 0.01
    assert fit.weight_read_s == pytest.approx(0.005, rel=0.05)
    assert fit.prefill_token_s == pytest.approx(3e-5, rel=0.05)
    assert fit.context_token_s == pytest.approx(4e-8, rel=0.05)
    assert fit.prefill_pair_s == pytest.approx(1e-9, rel=0.1)


def test_the_shipped_h200_profile_replays_every_measured_step_within_15_percent(capsys) -> None:
    path = data_file("gpu/h200_step_time.json")
    assert sim_calibration.main(["--gpu", str(path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["profile"] == "h200-llama3-8b" and len(report["points"]) == len(load_step_time_json(str(path)))
    assert report["max_rel_error"] < 0.15
    assert report["worst_point"] in {p["point"] for p in report["points"]}
    assert report["rms_rel_error"] <= report["max_rel_error"]
    assert {"prefill", "decode", "mixed"} == {p["point"].split()[0] for p in report["points"]}
    # the shipped constants are the fit of this very file (nothing tuned by hand on top)
    assert report["refit"]["rms_rel_error"] == pytest.approx(report["rms_rel_error"], abs=0.005)


def test_a_profile_far_from_the_measurement_fails_the_replay(capsys) -> None:
    path = data_file("gpu/h200_step_time.json")
    assert sim_calibration.main(["--gpu", str(path), "--profile", "l4-llama3-8b-awq"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["within_15pct"] is False


@pytest.mark.parametrize("content", ["not json", '{"prefill": []}', '{"prefill": [{"tokens": 1}], "decode": []}'])
def test_a_bad_measurement_file_is_one_line_naming_it(tmp_path: Path, capsys, content: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert sim_calibration.main(["--gpu", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sim-calibration: ") and str(bad) in err and "\n" not in err


def test_prefill_attention_makes_long_prompts_superlinear_and_later_chunks_dearer() -> None:
    p = dataclasses.replace(H200_8B, max_num_batched_tokens=2048)
    assert p.prefill_time(8192) > 2 * p.prefill_time(4096)  # each token attends to all before it
    first, last = p.step_time(2048, 0, 0, 2048 * 1024), p.step_time(2048, 0, 0, 2048 * (6144 + 1024))
    assert p.prefill_time(8192) == pytest.approx(first + last + p.step_time(2048, 0, 0, 2048 * 3072)
                                                 + p.step_time(2048, 0, 0, 2048 * 5120))
    # the replica charges a chunk for what it attends to: a prompt prefilled in 4 chunks takes prefill_time
    replica = SimReplica(p)
    replica.submit(SimRequest(1, 0.0, 8192, 2), 0.0)
    [done] = replica.advance(math.inf)
    assert done.first_token_time == pytest.approx(p.prefill_time(8192))
