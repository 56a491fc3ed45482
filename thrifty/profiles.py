"""Per-tier performance profiles for the replica simulator.

A profile is the handful of numbers that decide how long one vLLM engine step takes
and how much work fits in one replica. vLLM V1 runs prefill chunks and decodes in one
unified step; its time follows a roofline, measured on an H200 (docs/design/simulator-calibration.md):

    step = step_overhead_s                                   # fixed: launches, norms, sampling setup
         + max(weight_read_s,                                # weights streamed once (memory bound) ...
               (prefill_tokens + decode_tokens) * prefill_token_s)  # ... overlapped with the GEMMs (compute bound)
         + decode_tokens  * decode_token_s                   # per decoding sequence, outside the GEMMs
         + context_tokens * context_token_s                  # KV read by decode attention
         + prefill_pairs  * prefill_pair_s                   # prefill attention: prompt token x token attended

A small decode batch costs one weight read (batching is almost free), a prefill of a few
hundred tokens or more is compute bound (cost per token; the weight read hides under it,
it is not paid twice), long contexts slow decode through the KV-read term, and long prompts grow quadratically
through prefill attention (a chunk of n tokens after c computed ones attends n * (c + n/2) pairs).

GPU profiles are derived from the H200 measurement (`h200-llama3-8b`, fitted by
`thrifty bench sim-calibration --gpu ../shared/data/gpu/h200_step_time.json`): memory-bound
terms scaled by bytes moved and memory bandwidth, compute by FLOPs and dense FLOP/s, from
published spec numbers (`_derive`). They are estimates for capacity planning, not quotes. The
CPU profile is measured on the machine that runs it (`thrifty engine setup-cpu`; see
`thrifty/profile_cache.py`); the shipped one is a fallback measured elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BLOCK_TOKENS = 16  # vLLM's default KV-cache block size on GPUs (its CPU backend uses 128)
PRIOR_CONTEXT_TOKENS = 2048  # context per sequence the autoscaler's capacity prior assumes


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """How fast one replica (one engine, possibly tensor-parallel) runs one model.

    The step-time constants (module docstring) are, for a GPU profile, derived in `_derive`
    from the H200 fit; for the CPU profile, fitted to the real engine by `thrifty engine setup-cpu`.
    """

    name: str
    model: str
    hardware: str
    step_overhead_s: float  # fixed per-step time that overlaps nothing (kernel launches, small ops)
    prefill_token_s: float  # GEMM compute per token in the step: prompt tokens, and decode tokens alike
    decode_token_s: float  # per decode token outside the GEMMs (unfused per-token ops, sampling)
    context_token_s: float  # decode attention: KV read per context token
    kv_blocks: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    block_tokens: int = BLOCK_TOKENS
    num_gpus: int = 1
    gpu_hour_usd: float = 0.0  # price hint per GPU-hour (on-demand list prices vary)
    spec_overhead_frac: float = 0.15  # extra cost of a speculative verify step, as a fraction of the fixed step cost
    quality_recovery: float = 1.0  # answer quality kept vs the unquantized model (published eval average ratio)
    weight_read_s: float = 0.0  # streaming the weights once per step (memory bound); overlaps the GEMMs' compute
    prefill_pair_s: float = 0.0  # prefill attention (compute bound): per (prompt token, token it attends to) pair

    def __post_init__(self) -> None:
        for field in ("step_overhead_s", "prefill_token_s", "decode_token_s", "context_token_s", "gpu_hour_usd",
                      "weight_read_s", "prefill_pair_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"GpuProfile {self.name}: {field} must be a finite number >= 0")
        if not 0 < self.quality_recovery <= 1.05:
            raise ValueError(f"GpuProfile {self.name}: quality_recovery must be in (0, 1.05]")
        for field in ("kv_blocks", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_tokens", "num_gpus"):
            if getattr(self, field) < 1:
                raise ValueError(f"GpuProfile {self.name}: {field} must be >= 1")

    @property
    def replica_hour_usd(self) -> float:
        """What one replica costs per hour (all its GPUs)."""
        return self.gpu_hour_usd * self.num_gpus

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_tokens

    @property
    def fixed_step_s(self) -> float:
        """The least a step costs: fixed overhead plus one weight read (a small decode batch)."""
        return self.step_overhead_s + self.weight_read_s

    def step_time(self, prefill_tokens: float, decode_tokens: float, context_tokens: float,
                  prefill_pairs: float = 0.0) -> float:
        """Seconds one engine step takes (the roofline in the module docstring)."""
        return (
            self.step_overhead_s
            + max(self.weight_read_s, (prefill_tokens + decode_tokens) * self.prefill_token_s)
            + decode_tokens * self.decode_token_s
            + context_tokens * self.context_token_s
            + prefill_pairs * self.prefill_pair_s
        )

    def decode_step_time(self, batch: int, context_tokens: float) -> float:
        """Inter-token latency of a decode-only step with `batch` sequences."""
        return self.step_time(0, batch, context_tokens)

    def prefill_time(self, prompt_tokens: int) -> float:
        """Time to first token of a lone request (prefill chunks back to back)."""
        total, done, chunk = 0.0, 0, self.max_num_batched_tokens
        while done < prompt_tokens:
            n = min(chunk, prompt_tokens - done)
            total += self.step_time(n, 0, 0, n * (done + n / 2))
            done += n
        return total


# ---------------------------------------------------------------- derivation from the H200 measurement
@dataclass(frozen=True, slots=True)
class _Hardware:
    """Published per-GPU spec numbers (dense, no sparsity)."""

    memory_bytes_per_s: float
    bf16_flops: float
    fp8_flops: float = 0.0  # 0: no FP8 tensor cores


@dataclass(frozen=True, slots=True)
class _Shape:
    """A Llama-3 decoder's shape: what sets its weight bytes, FLOPs per token and KV bytes."""

    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int = 128_256

    @property
    def matmul_params(self) -> int:
        """Parameters every token multiplies through (all projections + lm_head), as step_time.py counts them."""
        q, kv = self.hidden, 2 * self.kv_heads * self.head_dim
        per_layer = self.hidden * (q + kv) + self.hidden * self.hidden + 3 * self.hidden * self.ffn
        return self.layers * per_layer + self.vocab * self.hidden

    def weight_bytes(self, bytes_per_param: float) -> float:
        """Decoder weights at `bytes_per_param`; lm_head stays 16-bit (as in the FP8/AWQ checkpoints)."""
        head = self.vocab * self.hidden
        return (self.matmul_params - head) * bytes_per_param + head * 2

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * 2  # K and V, 16-bit


# Spec sheets (memory bandwidth, dense BF16 / FP8 tensor FLOP/s, without sparsity):
#   H200 SXM: 4.8 TB/s, 989 TFLOP/s BF16 (https://www.nvidia.com/en-us/data-center/h200/)
#   H100 SXM: 3.35 TB/s, 989 TFLOP/s BF16, 1979 FP8 (https://www.nvidia.com/en-us/data-center/h100/)
#   A100 SXM 80GB: 2.0 TB/s (2,039 GB/s), 312 TFLOP/s BF16, no FP8 (https://www.nvidia.com/en-us/data-center/a100/)
#   L4: 300 GB/s, 121 TFLOP/s BF16 (https://www.nvidia.com/en-us/data-center/l4/)
H200 = _Hardware(4.8e12, 989e12)
H100 = _Hardware(3.35e12, 989e12, 1979e12)
A100 = _Hardware(2.0e12, 312e12)
L4 = _Hardware(0.3e12, 121e12)
LLAMA3_8B = _Shape(layers=32, hidden=4096, kv_heads=8, head_dim=128, ffn=14336)
LLAMA3_70B = _Shape(layers=80, hidden=8192, kv_heads=8, head_dim=128, ffn=28672)

# The H200 fit (Llama-3-8B shape, BF16, CUDA graphs; ../shared/data/gpu/h200_step_time.json from
# ../shared/tools/gpu/step_time.py): least-squares on relative error over all 24 measured steps
# (7 lone prefills 128-8192 tokens, 12 decode steps B 1-256 x L 512/2048, 5 mixed), RMS 3.2%,
# worst 9.3% (the 128-token prefill). The constants are physically plausible: 15.0 GB streamed
# in 3.92 ms = 3.83 TB/s (80% of the spec bandwidth; the run's copy test got 4.27 TB/s), 13.96
# GFLOP per token in 25.5 us = 548 TFLOP/s (55% of dense BF16), 128 KiB of KV per context token
# in 33.3 ns = 3.9 TB/s, and prefill attention's 4 x 32 heads x 128 x 32 layers = 0.52 MFLOP per
# pair in 1.05 ns = 500 TFLOP/s.
H200_8B = {"step_overhead_s": 2.06e-3, "weight_read_s": 3.92e-3, "prefill_token_s": 2.55e-5,
           "decode_token_s": 7.26e-6, "context_token_s": 3.33e-8, "prefill_pair_s": 1.05e-9}
# Tensor-parallel all-reduces (two per layer) are latency bound at decode batch sizes. Not
# measured (the H200 run used one GPU): an estimate of NCCL's small-message latency over NVLink.
_ALLREDUCE_S = 10e-6


def _derive(hw: _Hardware, shape: _Shape, *, bytes_per_param: float = 2.0, tp: int = 1,
            fp8_compute: bool = False) -> dict[str, float]:
    """Step constants for `shape` on `tp` GPUs of `hw`, scaled from the H200 8B measurement.

    Weight read: weight bytes per GPU over bandwidth. KV read per context token: KV bytes per
    GPU over bandwidth. Per-token compute: matmul FLOPs per GPU over dense FLOP/s (FP8 tensor
    cores for W8A8 checkpoints; weight-only FP8/INT4 still computes in 16 bits). Prefill
    attention per pair: query heads x head_dim x layers per GPU over BF16 FLOP/s. Per-token
    non-GEMM work (activations, hidden x layers) scales by bandwidth; the fixed overhead by
    the number of layers (kernels per step), plus the TP all-reduces.
    """
    ref = LLAMA3_8B
    bw = H200.memory_bytes_per_s / hw.memory_bytes_per_s
    flops = hw.fp8_flops if fp8_compute else hw.bf16_flops
    overhead = H200_8B["step_overhead_s"] * shape.layers / ref.layers + (2 * shape.layers * _ALLREDUCE_S if tp > 1 else 0.0)
    return {
        "step_overhead_s": overhead,
        "weight_read_s": H200_8B["weight_read_s"] * shape.weight_bytes(bytes_per_param) / tp / ref.weight_bytes(2.0) * bw,
        "prefill_token_s": H200_8B["prefill_token_s"] * shape.matmul_params / tp / ref.matmul_params * H200.bf16_flops / flops,
        "decode_token_s": H200_8B["decode_token_s"] * shape.layers * shape.hidden / tp / (ref.layers * ref.hidden) * bw,
        "context_token_s": H200_8B["context_token_s"] * shape.kv_bytes_per_token / tp / ref.kv_bytes_per_token * bw,
        "prefill_pair_s": H200_8B["prefill_pair_s"] * shape.layers * shape.hidden / tp / (ref.layers * ref.hidden)
        * H200.bf16_flops / hw.bf16_flops,
    }


PROFILES: dict[str, GpuProfile] = {
    # Llama-3-8B-shaped engine, BF16, one H200 (141 GB): the measurement itself (H200_8B above).
    # It is plain torch with CUDA graphs and cuBLAS, unfused norms/RoPE/SwiGLU: vLLM fuses those,
    # so a real vLLM step should be at or a little under these figures.
    # KV: 0.9 x 141 GB - 16 GB weights - ~3 GB activations = ~108 GB at 128 KiB/token => ~824k tokens => ~51.5k blocks.
    "h200-llama3-8b": GpuProfile(
        name="h200-llama3-8b", model="meta-llama/Meta-Llama-3-8B-Instruct", hardware="1x H200-SXM-141GB",
        **H200_8B, kv_blocks=51_500, max_model_len=8192, gpu_hour_usd=3.50,
    ),
    # Llama-3(.1)-8B-Instruct, BF16, one A100-SXM 80GB: _derive (bandwidth 2.4x below the H200's, BF16 3.2x).
    # KV: 32 layers x 8 KV heads x 128 dims x 2 (K,V) x 2 bytes = 128 KiB/token;
    #   0.9 x 80 GB - 16 GB weights - ~3 GB activations = ~53 GB => ~405k tokens => ~25k blocks.
    # Batching defaults: vLLM V1 API server on >=70 GB GPUs: max_num_seqs 256, max_num_batched_tokens 8192.
    "a100-llama3-8b": GpuProfile(
        name="a100-llama3-8b", model="meta-llama/Meta-Llama-3-8B-Instruct", hardware="1x A100-SXM-80GB",
        **_derive(A100, LLAMA3_8B), kv_blocks=25_300, max_model_len=8192, gpu_hour_usd=1.79,
    ),
    # Same model with FP8 weights on A100 (no FP8 tensor cores: vLLM runs W8A16 Marlin kernels):
    # half the decoder weight bytes to read, compute stays 16-bit (the dequant cost is not modelled).
    # 8 GB more for KV => ~29k blocks.
    # Quality: the model card reports OpenLLM v1 average 68.22 vs 68.71 unquantized (99.28%).
    "a100-llama3-8b-fp8": GpuProfile(
        name="a100-llama3-8b-fp8", model="neuralmagic/Meta-Llama-3-8B-Instruct-FP8", hardware="1x A100-SXM-80GB",
        **_derive(A100, LLAMA3_8B, bytes_per_param=1.0), kv_blocks=29_000, max_model_len=8192, gpu_hour_usd=1.79,
        quality_recovery=0.9928,
    ),
    # Llama-3(.1)-70B-Instruct, BF16, tensor parallel over 4x H100-SXM: _derive with tp=4.
    # KV: 80 layers x 8 KV heads x 128 x 2 x 2 B = 320 KiB/token, 80 KiB per GPU;
    #   per GPU 72 GB - 35 GB - 3 GB = 34 GB => ~425k tokens => ~26k blocks.
    "h100-llama3-70b-tp4": GpuProfile(
        name="h100-llama3-70b-tp4", model="meta-llama/Meta-Llama-3-70B-Instruct", hardware="4x H100-SXM-80GB",
        **_derive(H100, LLAMA3_70B, tp=4), kv_blocks=26_000, max_model_len=8192, num_gpus=4, gpu_hour_usd=2.99,
    ),
    # The same 70B with FP8 weights and activations (W8A8 on H100 FP8 tensor cores), tensor parallel
    # over 2x H100-SXM: the usual way to halve a 70B replica's GPUs. _derive with 1 byte/param,
    # tp=2 and FP8 FLOP/s: the same weight bytes per GPU as BF16 over 4. KV stays BF16: 160 KiB/token
    # per GPU (twice tp4's), so per GPU 72 GB - 35 GB - 3 GB = 34 GB holds ~212k tokens => ~13k blocks.
    # Quality: the model card (neuralmagic/Meta-Llama-3-70B-Instruct-FP8) reports OpenLLM v1 average
    # 79.16 vs 79.51 (99.56%).
    "h100-llama3-70b-fp8-tp2": GpuProfile(
        name="h100-llama3-70b-fp8-tp2", model="neuralmagic/Meta-Llama-3-70B-Instruct-FP8", hardware="2x H100-SXM-80GB",
        **_derive(H100, LLAMA3_70B, bytes_per_param=1.0, tp=2, fp8_compute=True),
        kv_blocks=13_000, max_model_len=8192, num_gpus=2, gpu_hour_usd=2.99, quality_recovery=0.9956,
    ),
    # Llama-3-8B-Instruct AWQ (INT4, group 128, Marlin kernels) on one L4 24GB: _derive with
    # ~0.53 bytes/param (4-bit weights + a 16-bit scale and zero per 128) and 16-bit compute.
    # KV: 0.9 x 24 GB - 5.7 GB - 2 GB = ~13.9 GB at 128 KiB/token => ~106k tokens => 6.6k blocks.
    # Smaller GPUs default to max_num_batched_tokens 2048 in vLLM V1's API server.
    "l4-llama3-8b-awq": GpuProfile(
        name="l4-llama3-8b-awq", model="casperhansen/llama-3-8b-instruct-awq", hardware="1x L4-24GB",
        **_derive(L4, LLAMA3_8B, bytes_per_param=0.53), kv_blocks=6_600, max_num_batched_tokens=2048,
        max_model_len=8192, gpu_hour_usd=0.71,
    ),
    # SmolLM2-135M-Instruct on vLLM's CPU build (0.32.0, --enforce-eager), as the test fixtures
    # start it (--max-num-seqs 8, --max-model-len 2048, VLLM_CPU_KVCACHE_SPACE=1). The fallback
    # when this machine has no measured profile (`thrifty engine setup-cpu` measures one; get_profile
    # loads it): measured on another 2-core AVX2 machine, where the worker thread is compute bound
    # (~27 ms per prefill token, ~85 ms per decode step alone, ~33 ms more per extra sequence,
    # ~1.2e-5 s per context token), set 1.3x above the quiet figures. No weight read term: on that
    # machine compute hid it at every batch. decode_token_s is the per-sequence cost beyond the
    # shared per-token compute (0.043 s in the additive model = 0.035 + 0.008).
    # The engine reports block_size 128 and 364 KV blocks (46,592 tokens) in vllm:cache_config_info.
    "cpu-smollm2-135m": GpuProfile(
        name="cpu-smollm2-135m", model="SmolLM2-135M-Instruct", hardware="2 CPU cores (AVX2), 1 worker thread",
        step_overhead_s=0.068, prefill_token_s=0.035, decode_token_s=0.008, context_token_s=1.6e-5,
        kv_blocks=364, block_tokens=128, max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=2048,
        gpu_hour_usd=0.0,
    ),
}
CPU_PROFILE = "cpu-smollm2-135m"


def speculative_tokens_per_step(num_tokens: int, acceptance_rate: float) -> float:
    """Tokens a sequence emits per verify step: the accepted drafts (each accepted only if
    every one before it was) plus the target model's own token."""
    a, k = acceptance_rate, num_tokens
    return float(k + 1) if a >= 1.0 - 1e-12 else (1.0 - a ** (k + 1)) / (1.0 - a)


def decode_step_s(profile: GpuProfile, batch: int, context: int,
                  speculative: tuple[int, float] | None = None) -> tuple[float, float]:
    """(seconds of one decode step of `batch` sequences, tokens each emits in it).

    With speculative decoding (`num_tokens` drafted, each accepted at `acceptance_rate`) a
    step verifies num_tokens + 1 tokens per sequence and pays the drafting overhead, as the
    simulator's steps do, and emits `speculative_tokens_per_step` of them."""
    if speculative is None:
        return profile.step_time(0, batch, batch * context), 1.0
    k, a = speculative
    step = profile.step_time(0, batch * (k + 1), batch * context) + profile.fixed_step_s * profile.spec_overhead_frac
    return step, speculative_tokens_per_step(k, a)


def engine_costs(profile: GpuProfile, batch: int = 64, context: int = PRIOR_CONTEXT_TOKENS,
                 speculative: tuple[int, float] | None = None) -> dict[str, float]:
    """Per-token engine seconds from the profile's step model (a decode step shared by `batch`).

    The autoscaler turns them into its capacity prior at the observed prompt/output mix and
    then learns the real capacity from served tokens; `batch` sequences of 2048-token
    contexts is a conservative start for chat traffic (longer contexts than most carry).
    `speculative` = (drafted tokens, expected acceptance): a tier that speculates emits
    ~2.3 tokens per step at 4 drafts and 0.6 acceptance, so a prior without it asks for
    about twice the decode capacity the tier needs (the cost bench's FP8 70B tier held 5
    replicas where 2 met the SLO).
    """
    step, emitted = decode_step_s(profile, batch, context, speculative)
    return {"prefill_s_per_token": profile.prefill_token_s, "decode_s_per_token": step / (batch * emitted)}


def get_profile(name: str) -> GpuProfile:
    """The named profile; a clear error listing the known ones otherwise.

    The CPU profile is the one measured on this machine when `thrifty engine setup-cpu` stored
    one (thrifty/profile_cache.py), else the shipped fallback (with a warning saying so).
    """
    try:
        shipped = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown simulator profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
    if name == CPU_PROFILE:
        from thrifty.profile_cache import local_profile

        return local_profile(shipped)
    return shipped
