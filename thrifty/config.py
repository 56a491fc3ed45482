"""One YAML file describes the fleet: tiers, prices, SLOs, caches, router, controller.

Validated at load with pydantic (unknown keys rejected); any problem becomes a
`ConfigError` whose message is one line naming the field, so the CLI never prints a
traceback for a bad file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, field_validator, model_validator

from thrifty.profiles import PROFILES

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


class ConfigError(ValueError):
    """A config file that cannot be used; `str()` is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Price(_Strict):
    """Either a self-hosted GPU price or an API token price, not both."""

    gpu_hour: NonNegative | None = None
    gpus_per_replica: Annotated[int, Field(ge=1)] = 1
    input_per_1m: NonNegative | None = None
    output_per_1m: NonNegative | None = None
    cached_input_per_1m: NonNegative | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Price":
        api = (self.input_per_1m, self.output_per_1m)
        if self.gpu_hour is None and all(v is None for v in api):
            raise ValueError("set gpu_hour (self-hosted) or input_per_1m/output_per_1m (API)")
        if self.gpu_hour is not None and any(v is not None for v in api):
            raise ValueError("gpu_hour and per-token prices are exclusive")
        if self.gpu_hour is None and any(v is None for v in api):
            raise ValueError("an API price needs both input_per_1m and output_per_1m")
        return self

    @property
    def self_hosted(self) -> bool:
        return self.gpu_hour is not None


class Speculative(_Strict):
    """vLLM `--speculative-config`: ngram (prompt lookup), eagle/eagle3, or a draft model."""

    method: Literal["ngram", "eagle", "eagle3", "draft_model", "mtp"]
    num_speculative_tokens: Annotated[int, Field(ge=1, le=16)] = 4
    model: str | None = None
    prompt_lookup_max: Annotated[int, Field(ge=1)] | None = None
    prompt_lookup_min: Annotated[int, Field(ge=1)] | None = None
    # The share of drafted tokens the target model is expected to accept: the simulator draws
    # each request's from it, and the autoscaler's capacity prior counts on it (the
    # measured acceptance is watched by drift's spec_acceptance signal).
    acceptance_rate: Annotated[float, Field(ge=0, le=1)] = 0.6

    @model_validator(mode="after")
    def _model_when_needed(self) -> "Speculative":
        if self.method in ("eagle", "eagle3", "draft_model") and not self.model:
            raise ValueError(f"method {self.method} needs a model")
        return self


class EngineSettings(_Strict):
    """How a tier's engine runs: `vllm` (started here), `sim` (simulator) or `external` (URLs)."""

    kind: Literal["vllm", "sim", "external"] = "vllm"
    quantization: Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "bitsandbytes", "compressed-tensors"] | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    speculative: Speculative | None = None
    max_num_seqs: Annotated[int, Field(ge=1)] = 256
    max_num_batched_tokens: Annotated[int, Field(ge=1)] | None = None
    enable_prefix_caching: bool = True
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    enforce_eager: bool = False
    device: Literal["cuda", "cpu"] = "cuda"
    extra_args: list[str] = Field(default_factory=list)
    # Tool calling with `tool_choice: "auto"`: vLLM's parser for this model's tool-call format
    # (e.g. hermes, llama3_json); set, the engine runs with --enable-auto-tool-choice.
    tool_call_parser: str | None = None
    # Simulator: which performance profile stands in for this tier's GPU + model.
    sim_profile: str = "a100-llama3-8b"
    # The autoscaler's capacity prior before telemetry: a performance profile describing this
    # tier's real GPU + model (`thrifty engine profiles` lists them). Unset: sim tiers use
    # sim_profile; other tiers start with no prior and learn capacity from served tokens.
    capacity_profile: str | None = None
    base_port: Annotated[int, Field(ge=1, le=65535)] = 8100
    # Local vLLM replicas publish their KV-cache events (an ipc endpoint per replica) and the
    # sidecar routes on them; `tokenizer` names the model folder holding tokenizer.json
    # (default: the tier's local model folder).
    kv_events: bool = True
    tokenizer: str | None = None

    @field_validator("sim_profile", "capacity_profile")
    @classmethod
    def _known_profile(cls, name: str | None) -> str | None:
        if name is not None and name not in PROFILES:
            raise ValueError(f"unknown performance profile {name!r}; known: {', '.join(sorted(PROFILES))}")
        return name

    def prior_profile(self) -> str | None:
        """The profile the autoscaler's capacity prior comes from, if any."""
        return self.capacity_profile or (self.sim_profile if self.kind == "sim" else None)


class Replicas(_Strict):
    count: Annotated[int, Field(ge=0)] = 1
    min: Annotated[int, Field(ge=0)] = 1
    max: Annotated[int, Field(ge=0)] = 4
    scale_to_zero: bool = False
    urls: list[str] = Field(default_factory=list)
    # External replicas' KV-event publishers, one per `urls` entry ("" = none): tcp://host:port or ipc://path.
    kv_events: list[str] = Field(default_factory=list)
    deployment: str | None = None
    # Seconds from a scale-up to a replica serving (pod scheduled, model loaded): the
    # autoscaler provisions for the demand this far ahead.
    startup_s: NonNegative = 90

    @model_validator(mode="after")
    def _bounds(self) -> "Replicas":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if self.min == 0 and not self.scale_to_zero:
            raise ValueError("min 0 needs scale_to_zero: true")
        if self.kv_events and len(self.kv_events) != len(self.urls):
            raise ValueError(f"kv_events has {len(self.kv_events)} endpoints for {len(self.urls)} urls (one per url, \"\" for none)")
        bad = [e for e in self.kv_events if e and not e.startswith(("tcp://", "ipc://"))]
        if bad:
            raise ValueError(f"kv_events endpoint {bad[0]!r} is not tcp://host:port or ipc://path")
        return self


class Tier(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)]
    model: str
    aliases: list[str] = Field(default_factory=list)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    price: Price
    replicas: Replicas = Field(default_factory=Replicas)
    cache: bool = True  # per-tier cache switch
    # Answer-length cap the sidecar adds to a chat/completions request that sets no max_tokens
    # (shrunk to fit max_model_len beside the prompt); None: no cap, the engine's default.
    default_max_tokens: Annotated[int, Field(ge=1)] | None = 1024

    @property
    def served_names(self) -> list[str]:
        return [self.model, *self.aliases]


class Slo(_Strict):
    ttft_p95_ms: Positive = 2000
    itl_p95_ms: Positive = 100
    # Share of requests the autoscaler keeps within ttft_p95_ms; the rest is the error
    # budget it may spend by running replicas closer to their capacity.
    ttft_attainment: Annotated[float, Field(gt=0.5, lt=1)] = 0.99
    # Optional length-aware TTFT SLO: a request's TTFT objective is ttft_p95_ms plus this
    # many ms per 1000 prompt tokens (prefill time grows with the prompt; a 7k-token prompt
    # cannot start as fast as a 50-token one). 0 = the flat ttft_p95_ms for every request.
    ttft_ms_per_1k_prompt_tokens: Annotated[float, Field(ge=0, le=60000)] = 0


class ExactCacheSettings(_Strict):
    enabled: bool = True
    max_bytes: Annotated[int, Field(ge=0)] = 256 * 1024 * 1024
    ttl_s: Positive = 3600
    deterministic_only: bool = True


class SemanticCacheSettings(_Strict):
    enabled: bool = True
    max_bytes: Annotated[int, Field(ge=0)] = 256 * 1024 * 1024
    ttl_s: Positive = 3600
    threshold: Annotated[float, Field(ge=-1, le=1)] | None = None  # None: the shipped calibration
    # Tiers (by the model the client asked for) whose sampled requests (temperature > 0,
    # no seed) may be answered from / stored in the semantic cache. Default none: the
    # exact cache's deterministic-only rule holds for both caches.
    sampled_tiers: list[str] = Field(default_factory=list)


class TenancySettings(_Strict):
    """Who shares cache entries (docs/operators.md, security)."""

    # Honour `X-Thrifty-Tenant` at all; then only from `trusted_proxies`.
    trust_tenant_header: bool = False
    # Client networks (CIDR) whose `X-Thrifty-Tenant` is honoured: the gateway(s) that set it.
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    # Requests without Authorization: `no_cache` (neither read nor write caches),
    # `per_client` (one tenant per client IP address), `shared` (one tenant for all).
    anonymous: Literal["no_cache", "per_client", "shared"] = "no_cache"

    @model_validator(mode="after")
    def _proxies_when_trusted(self) -> "TenancySettings":
        if self.trust_tenant_header and not self.trusted_proxies:
            raise ValueError("trust_tenant_header needs trusted_proxies (the gateway networks that set the header)")
        return self


class SharedCacheSettings(_Strict):
    """The shared cache tier on Redis (docs/design/shared-cache.md); absent: caches stay per pod."""

    url: Annotated[str, Field(min_length=1)]  # redis://[user:pass@]host:port/db, rediss://..., unix:///path
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "thr"
    timeout_ms: Annotated[float, Field(gt=0, le=5000)] = 50  # per request-path call
    connect_timeout_ms: Annotated[float, Field(gt=0, le=10000)] = 200
    breaker_failures: Annotated[int, Field(ge=1)] = 3  # consecutive failures that open the breaker
    breaker_cooldown_s: Annotated[float, Field(gt=0, le=300)] = 2.0
    max_entry_bytes: Annotated[int, Field(ge=256)] = 256 * 1024  # compressed entry cap
    stream_maxlen: Annotated[int, Field(ge=100)] = 100_000  # approximate trim of the semantic stream
    block_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000  # stream consumer's blocking read

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")  # never echo it: it may hold a password
        return value


class CacheSettings(_Strict):
    exact: ExactCacheSettings = Field(default_factory=ExactCacheSettings)
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)
    tenancy: TenancySettings = Field(default_factory=TenancySettings)
    shared: SharedCacheSettings | None = None


class RouterSettings(_Strict):
    enabled: bool = True
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None  # None: the artifact's calibration
    artifact: str | None = None
    escalate_on_error: bool = True
    # Proofs, multi-step maths and code go to the largest allowed tier before the learned
    # score is consulted (proxy/levers/router.py `hard_prompt`); false: the score alone decides.
    hard_prompts: bool = True


class ShadowSettings(_Strict):
    """Shadow evaluation (docs/design/quality.md): a share of cheaper answers re-asked of the reference tier."""

    rate: Annotated[float, Field(ge=0, le=1)] = 0.02
    judge: Literal["exact", "embedding", "llm", "feedback"] = "exact"
    reference_tier: str | None = None  # None: the baseline tier (named, else the priciest)
    max_inflight: Annotated[int, Field(ge=0)] = 4  # shadow calls open at once; more are skipped (shed first)
    embedding_agree: Annotated[float, Field(gt=0, le=1)] = 0.9  # `embedding` judge: cosine at which answers agree
    max_verdicts: Annotated[int, Field(ge=1, le=1000)] = 500  # verdicts held for the controller between windows


class CacheWatchSettings(_Strict):
    """Semantic-cache watch: shadowed semantic hits judged; the floor rises when false hits exceed the target."""

    precision_target: Annotated[float, Field(gt=0, lt=1)] = 0.95
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.9
    min_samples: Annotated[int, Field(ge=1)] = 20
    step: Annotated[float, Field(gt=0, le=0.2)] = 0.01
    max_floor: Annotated[float, Field(gt=0, le=1)] = 0.99


class ControlGroupSettings(_Strict):
    rate: Annotated[float, Field(ge=0, le=1)] = 0.01  # share served by the baseline path (no cache, no routing)


class QualitySettings(_Strict):
    """Closed-loop quality: shadow evaluation, the control group, the cache watch (docs/design/quality.md)."""

    enabled: bool = True
    target: Annotated[float, Field(gt=0, lt=1)] = 0.95  # quality retained the controller's threshold must meet
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.9  # one-sided level of the bounds
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    control: ControlGroupSettings = Field(default_factory=ControlGroupSettings)
    cache_watch: CacheWatchSettings = Field(default_factory=CacheWatchSettings)
    feedback_pending: Annotated[int, Field(ge=0)] = 10000  # recent request ids `POST /v1/thrifty/feedback` accepts
    # Push a threshold per router topic cluster with verdicts (a cluster with too few starts
    # conservative: all to the reference); off: one pooled threshold for every cluster.
    cluster_thresholds: bool = True


class ListenSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # On SIGTERM, requests in flight get this long to finish before connections are cut
    # (below Kubernetes' default 30 s terminationGracePeriodSeconds).
    drain_s: Annotated[float, Field(ge=0, le=3600)] = 25.0


class TelemetryTls(_Strict):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> "TelemetryTls":
        if bool(self.cert) != bool(self.key):
            raise ValueError("set both cert and key, or neither")
        return self


class ControllerSettings(_Strict):
    url: str | None = None  # grpc target host:port for the sidecar's telemetry stream
    listen_grpc: str = "127.0.0.1:50051"
    listen_http: str = "127.0.0.1:8090"
    namespace: str = "thrifty"
    dry_run: bool = False
    interval_s: Positive = 5
    # Telemetry windows ending further than this ahead of the controller's clock are refused.
    max_clock_skew_s: Annotated[float, Field(gt=0, le=600)] = 30
    # TLS for the telemetry stream (docs/operators.md, security). Controller: cert + key
    # (+ ca: require client certificates, mTLS). Sidecar: ca verifies the controller,
    # cert + key present a client certificate; server_name overrides the name checked.
    tls: TelemetryTls = Field(default_factory=lambda: TelemetryTls())


class AutoscalerSettings(_Strict):
    # Share of a replica's learned tokens/s capacity the autoscaler plans to use (before the
    # SLO budget's factor): queueing margin beyond it comes from the TTFT/backlog rules.
    target_utilization: Annotated[float, Field(gt=0, le=1)] = 1.0


class AdmissionSettings(_Strict):
    max_queue: Annotated[int, Field(ge=0)] = 1024
    max_wait_s: Positive = 30
    flex_max_wait_s: Positive | None = None  # `service_tier: flex` waits this long (default 4x max_wait_s)
    saturation_waiting: Annotated[int, Field(ge=0)] = 16
    saturation_kv: Annotated[float, Field(gt=0, le=1)] = 0.95


class BatchSettings(_Strict):
    """The Batch API (`/v1/files`, `/v1/batches`); off until `store` names a SQLite file on a volume."""

    store: str | None = None  # path of the SQLite database ("" or absent: the Batch API answers 404)
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 64  # most batch lines in flight per sidecar (AIMD below it)
    max_file_bytes: Annotated[int, Field(ge=1)] = 200 * 1024 * 1024  # OpenAI's limit for a batch input file


class TimeoutSettings(_Strict):
    connect_s: Positive = 5
    first_byte_s: Positive = 120
    total_s: Positive = 600


class Config(_Strict):
    tiers: Annotated[list[Tier], Field(min_length=1)]
    listen: ListenSettings = Field(default_factory=ListenSettings)
    slo: Slo = Field(default_factory=Slo)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
    baseline_tier: str | None = None  # defaults to the most expensive tier

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        names = [t.name for t in self.tiers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tier names repeat: {sorted(dup)}")
        seen: dict[str, str] = {}
        for tier in self.tiers:
            for alias in tier.served_names:
                if alias in seen and seen[alias] != tier.name:
                    raise ValueError(f"model name {alias!r} is served by tiers {seen[alias]!r} and {tier.name!r}")
                seen[alias] = tier.name
        if self.baseline_tier is not None and self.baseline_tier not in names:
            raise ValueError(f"baseline_tier {self.baseline_tier!r} is not a tier")
        ref = self.quality.shadow.reference_tier
        if ref is not None and ref not in names:
            raise ValueError(f"quality.shadow.reference_tier {ref!r} is not a tier")
        unknown = [n for n in self.cache.semantic.sampled_tiers if n not in names]
        if unknown:
            raise ValueError(f"cache.semantic.sampled_tiers names unknown tiers: {unknown}")
        return self

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)

    def tier_for_model(self, model: str) -> Tier | None:
        for t in self.tiers:
            if model in t.served_names:
                return t
        return None


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "constrained-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate already-parsed YAML/JSON data; raise `ConfigError` with one line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_path(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}: {field}: {msg}{more}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(path))


def baseline_tier(config: Config) -> Tier:
    """The tier every request would use without thrifty: named, or the priciest one."""
    if config.baseline_tier:
        return config.tier(config.baseline_tier)

    def unit_cost(t: Tier) -> float:
        p = t.price
        if p.self_hosted:
            return (p.gpu_hour or 0) * p.gpus_per_replica
        return (p.input_per_1m or 0) + (p.output_per_1m or 0)

    return max(config.tiers, key=unit_cost)
