"""Per-tier performance profiles for the replica simulator.

A profile is the handful of numbers that decide how long one vLLM engine step takes
and how much work fits in one replica. The step-time model is linear in what the
step does (vLLM V1 runs prefill chunks and decodes in one unified step):

    step = step_overhead_s                       # weights streamed once + launch/scheduler
         + prefill_tokens  * prefill_token_s     # compute-bound prompt tokens
         + decode_tokens   * decode_token_s      # one per decoding sequence (1+k with spec decoding)
         + context_tokens  * context_token_s     # KV read by decode attention

Decode at small batch is memory bound (the overhead dominates, so batching is almost
free), prefill is compute bound (cost per token), and long contexts slow decode through
the attention term: the three shapes the autoscaler and balancer depend on.

GPU numbers are derived from published vLLM measurements (cited on each profile) and
from the hardware roofline where a figure was not published; they are estimates for
capacity planning, not quotes. The CPU profile is measured on this machine against the
real vLLM CPU build (`thrifty bench sim-calibration` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_TOKENS = 16  # vLLM's default KV-cache block size on GPUs (its CPU backend uses 128)
PRIOR_CONTEXT_TOKENS = 2048  # context per sequence the autoscaler's capacity prior assumes


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """How fast one replica (one engine, possibly tensor-parallel) runs one model."""

    name: str
    model: str
    hardware: str
    step_overhead_s: float
    prefill_token_s: float
    decode_token_s: float
    context_token_s: float
    kv_blocks: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    block_tokens: int = BLOCK_TOKENS
    num_gpus: int = 1
    gpu_hour_usd: float = 0.0  # price hint per GPU-hour (on-demand list prices vary)
    spec_overhead_frac: float = 0.15  # extra step cost of a speculative verify step (drafting, rejection sampling)
    quality_recovery: float = 1.0  # answer quality kept vs the unquantized model (published eval average ratio)

    def __post_init__(self) -> None:
        for field in ("step_overhead_s", "prefill_token_s", "decode_token_s", "context_token_s", "gpu_hour_usd"):
            if getattr(self, field) < 0:
                raise ValueError(f"GpuProfile {self.name}: {field} must be >= 0")
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

    def step_time(self, prefill_tokens: float, decode_tokens: float, context_tokens: float) -> float:
        """Seconds one engine step takes."""
        return (
            self.step_overhead_s
            + prefill_tokens * self.prefill_token_s
            + decode_tokens * self.decode_token_s
            + context_tokens * self.context_token_s
        )

    def decode_step_time(self, batch: int, context_tokens: float) -> float:
        """Inter-token latency of a decode-only step with `batch` sequences."""
        return self.step_time(0, batch, context_tokens)

    def prefill_time(self, prompt_tokens: int) -> float:
        """Time to first token of a lone request (prefill chunks back to back)."""
        steps = -(-prompt_tokens // self.max_num_batched_tokens)
        return steps * self.step_overhead_s + prompt_tokens * self.prefill_token_s


PROFILES: dict[str, GpuProfile] = {
    # Llama-3(.1)-8B-Instruct, BF16, one A100-SXM 80GB.
    # Decode: J. Musgrave, "vLLM throughput-latency sweep on NVIDIA A100"
    #   (https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on; vLLM 0.23, Llama-3.1-8B BF16,
    #   1024 in / 128 out): 75 tok/s at concurrency 1 on an A100-40GB (ITL ~13.3 ms, 77% of the
    #   1.55 TB/s roofline) and 6.6x the throughput at concurrency 8 "with almost no latency cost".
    #   Scaled to the 80GB part's 2.04 TB/s: ~10 ms per step; small per-sequence increment.
    # Prefill: 16 GFLOP/token at ~55% of 312 TFLOPS => ~0.09 ms/token (1k-token TTFT ~100 ms,
    #   in line with the 100-250 ms TTFT reported for Llama-3-8B on A100-80GB at moderate load,
    #   https://cloudach.vercel.app/blog/sub-100ms-ttft-llama3-vllm).
    # KV: 32 layers x 8 KV heads x 128 dims x 2 (K,V) x 2 bytes = 128 KiB/token;
    #   0.9 x 80 GB - 16 GB weights - ~3 GB activations = ~53 GB => ~405k tokens => ~25k blocks.
    # Batching defaults: vLLM V1 API server on >=70 GB GPUs: max_num_seqs 256, max_num_batched_tokens 8192.
    "a100-llama3-8b": GpuProfile(
        name="a100-llama3-8b", model="meta-llama/Meta-Llama-3-8B-Instruct", hardware="1x A100-SXM-80GB",
        step_overhead_s=0.0095, prefill_token_s=0.000090, decode_token_s=0.00012, context_token_s=6.5e-8,
        kv_blocks=25_300, max_model_len=8192, gpu_hour_usd=1.79,
    ),
    # Same model with FP8 weights on A100 (no FP8 tensor cores: vLLM runs W8A16 Marlin kernels).
    # Half the weight bytes => the memory-bound decode step drops to ~60% (vLLM's FP8 docs: "2x
    # reduction in model memory requirements and up to a 1.6x improvement in throughput",
    # https://docs.vllm.ai/en/v0.32.0/features/quantization/llm_compressor/fp8/);
    # prefill stays compute bound in 16-bit with a small dequant cost; 8 GB more for KV => ~29k blocks.
    # Quality: the model card reports OpenLLM v1 average 68.22 vs 68.71 unquantized (99.28%).
    "a100-llama3-8b-fp8": GpuProfile(
        name="a100-llama3-8b-fp8", model="neuralmagic/Meta-Llama-3-8B-Instruct-FP8", hardware="1x A100-SXM-80GB",
        step_overhead_s=0.0058, prefill_token_s=0.000095, decode_token_s=0.00012, context_token_s=6.5e-8,
        kv_blocks=29_000, max_model_len=8192, gpu_hour_usd=1.79, quality_recovery=0.9928,
    ),
    # Llama-3(.1)-70B-Instruct, BF16, tensor parallel over 4x H100-SXM.
    # vLLM v0.6.0 performance update (https://blog.vllm.ai/2024/09/05/perf-update.html): 70B on
    # 4xH100 with ShareGPT, TPOT halved vs v0.5.3; 35 GB of weights per GPU at 3.35 TB/s => 10.5 ms
    # floor plus all-reduce => ~14 ms per step. Cross-check: Llama-3.3-70B on 8xA100 with vLLM 0.6
    # reports TBT p50 32 ms at batch 16 and TTFT 220 ms for 1k tokens (18.2k prefill tok/s)
    # (https://evokernel-specs.pages.dev/en/cases/case-llama33-a100x8-vllm-001/); H100 ~2x A100.
    # Prefill: 140 GFLOP/token over 4x989 TFLOPS at ~45% => ~0.08 ms/token.
    # KV: 80 layers x 8 KV heads x 128 x 2 x 2 B = 320 KiB/token, 80 KiB per GPU;
    #   per GPU 72 GB - 35 GB - 3 GB = 34 GB => ~425k tokens => ~26k blocks.
    "h100-llama3-70b-tp4": GpuProfile(
        name="h100-llama3-70b-tp4", model="meta-llama/Meta-Llama-3-70B-Instruct", hardware="4x H100-SXM-80GB",
        step_overhead_s=0.014, prefill_token_s=0.000080, decode_token_s=0.00015, context_token_s=2.5e-8,
        kv_blocks=26_000, max_model_len=8192, num_gpus=4, gpu_hour_usd=2.99,
    ),
    # The same 70B with FP8 weights and activations (W8A8, H100 FP8 tensor cores), tensor parallel
    # over 2x H100-SXM: the usual way to halve a 70B replica's GPUs. 70 GB of weights => 35 GB per
    # GPU, as in BF16 over 4 GPUs, so the memory-bound decode step keeps its ~10.5 ms floor; a
    # 2-way all-reduce is cheaper than 4-way => ~13 ms. Prefill: 140 GFLOP/token over 2x 1979
    # TFLOPS FP8 at ~45% => ~0.08 ms/token, as before. KV stays BF16: 160 KiB/token per GPU (twice
    # tp4's), so decode attention reads twice the bytes per context token and per GPU
    # 72 GB - 35 GB - 3 GB = 34 GB holds ~212k tokens => ~13k blocks (half of tp4's).
    # vLLM's FP8 docs: "2x reduction in model memory requirements and up to a 1.6x improvement in
    # throughput with minimal impact on accuracy". Quality: the model card
    # (neuralmagic/Meta-Llama-3-70B-Instruct-FP8) reports OpenLLM v1 average 79.16 vs 79.51 (99.56%).
    "h100-llama3-70b-fp8-tp2": GpuProfile(
        name="h100-llama3-70b-fp8-tp2", model="neuralmagic/Meta-Llama-3-70B-Instruct-FP8", hardware="2x H100-SXM-80GB",
        step_overhead_s=0.013, prefill_token_s=0.000080, decode_token_s=0.00015, context_token_s=5.0e-8,
        kv_blocks=13_000, max_model_len=8192, num_gpus=2, gpu_hour_usd=2.99, quality_recovery=0.9956,
    ),
    # Llama-3-8B-Instruct AWQ (INT4, Marlin kernels) on one L4 24GB (300 GB/s, 121 TFLOPS BF16).
    # L4 + vLLM AWQ-Marlin peaks at ~452 output tok/s (https://bench.bereketlemma.com/, vLLM 0.16,
    # 3.3x FP16); 4.6 GB of weights at 300 GB/s => 15 ms floor => ~19 ms per step.
    # Prefill ~16 GFLOP/token at ~40% of 121 TFLOPS => ~0.33 ms/token.
    # KV: 0.9 x 24 GB - 5.7 GB - 2 GB = ~13.9 GB at 128 KiB/token => ~106k tokens => 6.6k blocks.
    # Smaller GPUs default to max_num_batched_tokens 2048 in vLLM V1's API server.
    "l4-llama3-8b-awq": GpuProfile(
        name="l4-llama3-8b-awq", model="casperhansen/llama-3-8b-instruct-awq", hardware="1x L4-24GB",
        step_overhead_s=0.019, prefill_token_s=0.00033, decode_token_s=0.00040, context_token_s=4.4e-7,
        kv_blocks=6_600, max_num_batched_tokens=2048, max_model_len=8192, gpu_hour_usd=0.71,
    ),
    # SmolLM2-135M-Instruct on vLLM's CPU build (0.32.0, --enforce-eager) with 2 cores, as the
    # test fixtures start it (--max-num-seqs 8, --max-model-len 2048, VLLM_CPU_KVCACHE_SPACE=1).
    # Measured here against the real engine: vLLM pins its one OpenMP worker thread to core 0
    # (the other core is reserved) and runs bf16 emulated on AVX2, so every token is compute
    # bound. Worker CPU time (= wall time on a quiet machine): ~27 ms per prefill token (512
    # tokens: 13.3 s; 1260 tokens: 34.8 s), ~85 ms per decode step alone, ~33 ms more per extra
    # sequence (ITL 121 / 162 / 384 / 471 ms at batch 1 / 2 / 4 / 8 with the machine loaded),
    # ~1.2e-5 s per context token (ITL +19 ms at 1.2k context). With other work on the machine
    # the same requests took ~1.7x longer (sim-calibration TTFT 3.3 s vs 2.0 s at 62 tokens), so
    # the figures below sit 1.3x above the quiet ones: within 2x of the engine either way.
    # The engine reports block_size 128 and 364 KV blocks (46,592 tokens) in
    # vllm:cache_config_info. `thrifty bench sim-calibration` re-checks all of this.
    "cpu-smollm2-135m": GpuProfile(
        name="cpu-smollm2-135m", model="SmolLM2-135M-Instruct", hardware="2 CPU cores (AVX2), 1 worker thread",
        step_overhead_s=0.068, prefill_token_s=0.035, decode_token_s=0.043, context_token_s=1.6e-5,
        kv_blocks=364, block_tokens=128, max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=2048,
        gpu_hour_usd=0.0,
    ),
}


def engine_costs(profile: GpuProfile, batch: int = 64, context: int = PRIOR_CONTEXT_TOKENS) -> dict[str, float]:
    """Per-token engine seconds from the profile's step model (a decode step shared by `batch`).

    The autoscaler turns them into its capacity prior at the observed prompt/output mix and
    then learns the real capacity from served tokens; `batch` sequences of 2048-token
    contexts is a conservative start for chat traffic (longer contexts than most carry).
    """
    decode = profile.step_time(0, batch, batch * context) / batch
    return {"prefill_s_per_token": profile.prefill_token_s, "decode_s_per_token": decode}


def get_profile(name: str) -> GpuProfile:
    """The named profile; a clear error listing the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown simulator profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
