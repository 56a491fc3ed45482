from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Histogram(_message.Message):
    __slots__ = ("bounds", "counts", "sum", "count")
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    bounds: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum: float
    count: int
    def __init__(self, bounds: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., sum: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class ReplicaStats(_message.Message):
    __slots__ = ("url", "healthy", "waiting", "running", "kv_cache_usage", "inflight", "spec_draft_tokens", "spec_accepted_tokens", "prompt_tokens", "generation_tokens")
    URL_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    SPEC_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEC_ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    url: str
    healthy: bool
    waiting: float
    running: float
    kv_cache_usage: float
    inflight: float
    spec_draft_tokens: float
    spec_accepted_tokens: float
    prompt_tokens: float
    generation_tokens: float
    def __init__(self, url: _Optional[str] = ..., healthy: _Optional[bool] = ..., waiting: _Optional[float] = ..., running: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., inflight: _Optional[float] = ..., spec_draft_tokens: _Optional[float] = ..., spec_accepted_tokens: _Optional[float] = ..., prompt_tokens: _Optional[float] = ..., generation_tokens: _Optional[float] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("tier", "requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "dollars", "baseline_dollars", "ttft", "itl", "queue_depth", "cache_exact_hits", "cache_semantic_hits", "routed", "replicas")
    TIER_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DOLLARS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    TTFT_FIELD_NUMBER: _ClassVar[int]
    ITL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CACHE_EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    dollars: float
    baseline_dollars: float
    ttft: Histogram
    itl: Histogram
    queue_depth: float
    cache_exact_hits: int
    cache_semantic_hits: int
    routed: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStats]
    def __init__(self, tier: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., dollars: _Optional[float] = ..., baseline_dollars: _Optional[float] = ..., ttft: _Optional[_Union[Histogram, _Mapping]] = ..., itl: _Optional[_Union[Histogram, _Mapping]] = ..., queue_depth: _Optional[float] = ..., cache_exact_hits: _Optional[int] = ..., cache_semantic_hits: _Optional[int] = ..., routed: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStats, _Mapping]]] = ...) -> None: ...

class StatsWindow(_message.Message):
    __slots__ = ("seq", "window_start", "window_end", "tiers", "catch_up", "shared_cache", "verdicts", "ledger")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    SHARED_CACHE_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    seq: int
    window_start: float
    window_end: float
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    catch_up: bool
    shared_cache: SharedCacheStats
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    ledger: _containers.RepeatedCompositeFieldContainer[LedgerGroup]
    def __init__(self, seq: _Optional[int] = ..., window_start: _Optional[float] = ..., window_end: _Optional[float] = ..., tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., catch_up: _Optional[bool] = ..., shared_cache: _Optional[_Union[SharedCacheStats, _Mapping]] = ..., verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ..., ledger: _Optional[_Iterable[_Union[LedgerGroup, _Mapping]]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("kind", "cheap_tier", "reference_tier", "cluster", "ease", "score")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHEAP_TIER_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_TIER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    EASE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    cheap_tier: str
    reference_tier: str
    cluster: int
    ease: float
    score: float
    def __init__(self, kind: _Optional[str] = ..., cheap_tier: _Optional[str] = ..., reference_tier: _Optional[str] = ..., cluster: _Optional[int] = ..., ease: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class LedgerGroup(_message.Message):
    __slots__ = ("group", "requests", "dollars", "dollars_sq", "baseline_dollars", "judged", "quality_sum")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DOLLARS_FIELD_NUMBER: _ClassVar[int]
    DOLLARS_SQ_FIELD_NUMBER: _ClassVar[int]
    BASELINE_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SUM_FIELD_NUMBER: _ClassVar[int]
    group: str
    requests: int
    dollars: float
    dollars_sq: float
    baseline_dollars: float
    judged: int
    quality_sum: float
    def __init__(self, group: _Optional[str] = ..., requests: _Optional[int] = ..., dollars: _Optional[float] = ..., dollars_sq: _Optional[float] = ..., baseline_dollars: _Optional[float] = ..., judged: _Optional[int] = ..., quality_sum: _Optional[float] = ...) -> None: ...

class SharedCacheStats(_message.Message):
    __slots__ = ("up", "exact_hits", "semantic_hits", "sync_errors", "mirror_lag")
    UP_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    SYNC_ERRORS_FIELD_NUMBER: _ClassVar[int]
    MIRROR_LAG_FIELD_NUMBER: _ClassVar[int]
    up: bool
    exact_hits: int
    semantic_hits: int
    sync_errors: int
    mirror_lag: Histogram
    def __init__(self, up: _Optional[bool] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., sync_errors: _Optional[int] = ..., mirror_lag: _Optional[_Union[Histogram, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("sidecar_id", "version", "tiers", "proof")
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    sidecar_id: str
    version: str
    tiers: _containers.RepeatedScalarFieldContainer[str]
    proof: bytes
    def __init__(self, sidecar_id: _Optional[str] = ..., version: _Optional[str] = ..., tiers: _Optional[_Iterable[str]] = ..., proof: _Optional[bytes] = ...) -> None: ...

class SidecarMessage(_message.Message):
    __slots__ = ("hello", "window")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    window: StatsWindow
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., window: _Optional[_Union[StatsWindow, _Mapping]] = ...) -> None: ...

class TierTarget(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    def __init__(self, replicas: _Optional[int] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("version", "router_threshold", "cache_enabled", "tier_targets", "router_cluster_thresholds")
    class TierTargetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TierTarget
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TierTarget, _Mapping]] = ...) -> None: ...
    class RouterClusterThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    TIER_TARGETS_FIELD_NUMBER: _ClassVar[int]
    ROUTER_CLUSTER_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    router_threshold: float
    cache_enabled: bool
    tier_targets: _containers.MessageMap[str, TierTarget]
    router_cluster_thresholds: _containers.ScalarMap[int, float]
    def __init__(self, version: _Optional[int] = ..., router_threshold: _Optional[float] = ..., cache_enabled: _Optional[bool] = ..., tier_targets: _Optional[_Mapping[str, TierTarget]] = ..., router_cluster_thresholds: _Optional[_Mapping[int, float]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("policy", "ack")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    ack: Ack
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...
