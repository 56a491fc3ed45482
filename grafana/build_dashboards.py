"""Writes grafana/dashboards/*.json from the panel lists below (the JSON is committed;
tests check it matches). One place for the queries keeps the four dashboards
consistent: every query filters on the `namespace` and `tier` template variables.

Run: python grafana/build_dashboards.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
NS = 'namespace=~"$namespace"'
NT = 'namespace=~"$namespace",tier=~"$tier"'
R = "$__rate_interval"


def rate(metric: str, sel: str = NT, by: str = "tier") -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{R}]))"


def ratio_or_zero(num: str, den: str) -> str:
    """num/den where an absent numerator (nothing happened yet) reads as 0, not as no data."""
    return f"({num} or {den} * 0) / {den}"


def p95(metric: str, sel: str = NT, by: str = "tier") -> str:
    return f"histogram_quantile(0.95, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{R}])))"


Panel = dict[str, Any]


def panel(title: str, targets: list[tuple[str, str]], *, kind: str = "timeseries", unit: str = "short",
          description: str = "", w: int = 12, h: int = 8) -> Panel:
    return {"type": kind, "title": title, "description": description, "unit": unit, "w": w, "h": h,
            "targets": [{"expr": expr, "legendFormat": legend} for expr, legend in targets]}


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "thrifty-cost": ("Thrifty / Cost & savings", [
        panel("Savings ratio", [(
            f"1 - sum(rate(thrifty_cost_dollars_total{{{NT}}}[{R}])) / sum(rate(thrifty_baseline_cost_dollars_total{{{NT}}}[{R}]))",
            "savings")], kind="stat", unit="percentunit", w=6,
            description="1 - actual cost / what the same requests would cost on the baseline tier without caches"),
        panel("Dollars per hour: now vs baseline", [
            (f"sum(rate(thrifty_cost_dollars_total{{{NT}}}[{R}])) * 3600", "now"),
            (f"sum(rate(thrifty_baseline_cost_dollars_total{{{NT}}}[{R}])) * 3600", "baseline"),
        ], unit="currencyUSD", w=18),
        panel("Dollars per hour by tier", [(rate("thrifty_cost_dollars_total") + " * 3600", "{{tier}}")], unit="currencyUSD"),
        panel("Savings by lever ($/h)", [(rate("thrifty_savings_dollars_total", NS, "lever") + " * 3600", "{{lever}}")],
              unit="currencyUSD"),
        panel("Cost per 1k requests", [(
            f"1000 * {rate('thrifty_cost_dollars_total')} / {rate('thrifty_requests_total')}", "{{tier}}")],
            unit="currencyUSD"),
        panel("Tokens per second by kind", [(rate("thrifty_tokens_total", NT, "tier, kind"), "{{tier}} {{kind}}")]),
        panel("Controller: savings ratio (last window)", [(f"thrifty_controller_savings_ratio{{{NS}}}", "savings")],
              unit="percentunit", w=12),
        panel("Controller: cost per 1k requests", [
            (f"thrifty_controller_cost_per_1k_requests_dollars{{{NT}}}", "{{tier}}")], unit="currencyUSD"),
        panel("Savings ledger: measured (interval) vs modelled", [
            (f"max by (kind) (thrifty_controller_ledger_savings_ratio{{{NS}}})", "{{kind}}"),
            (f"1 - sum(rate(thrifty_ledger_dollars_total{{{NS},group=\"treated\"}}[{R}])) / "
             f"sum(rate(thrifty_ledger_baseline_dollars_total{{{NS},group=\"treated\"}}[{R}]))", "modelled (window)"),
        ], unit="percentunit",
            description="measured: 1 - cost per treated request / cost per control request (the randomized control "
                        "group served by the baseline path), with its two-sided interval at quality.confidence; "
                        "modelled: the treated group's tokens priced on the baseline tier. Fleet-wide since the "
                        "controller started (set on its control rounds once shadow verdicts arrive); "
                        "modelled (window) is computed from the sidecars' ledger counters over the rate window"),
        panel("Savings ledger: cost per request, control vs treated", [
            (f"sum by (group) (rate(thrifty_ledger_dollars_total{{{NS}}}[{R}])) / "
             f"sum by (group) (rate(thrifty_ledger_requests_total{{{NS}}}[{R}]))", "{{group}} (window)"),
            (f"max by (group, bound) (thrifty_controller_ledger_cost_per_request_dollars{{{NS}}})", "{{group}} {{bound}} (controller)"),
        ], unit="currencyUSD", description="requests for the baseline tier; control skips the caches and the router. "
                                           "Shadow spend is charged to the group of the request shadowed"),
        panel("Shadow spend ($/h)", [(rate("thrifty_shadow_cost_dollars_total") + " * 3600", "{{tier}}")],
              unit="currencyUSD", w=8, description="shadow calls to the reference tier (and llm-judge gradings); "
                                                   "already included in thrifty_cost_dollars_total, so savings are net of it"),
        panel("Shadow spend share of all spend", [(
            f"sum(rate(thrifty_shadow_cost_dollars_total{{{NT}}}[{R}])) / sum(rate(thrifty_cost_dollars_total{{{NT}}}[{R}]))",
            "share")], kind="stat", unit="percentunit", w=4),
        panel("Savings ledger: requests and judged requests by group", [
            (rate("thrifty_ledger_requests_total", NS, "group"), "{{group}} requests/s"),
            (rate("thrifty_ledger_judged_total", NS, "group"), "{{group}} judged/s"),
            (f"sum by (group) (rate(thrifty_ledger_quality_total{{{NS}}}[{R}])) / "
             f"sum by (group) (rate(thrifty_ledger_judged_total{{{NS}}}[{R}]))", "{{group}} quality"),
        ], description="control share is quality.control.rate; quality = mean judged score of the group's shadowed "
                       "requests (the reference tier's own answers score 1)"),
    ]),
    "thrifty-slo": ("Thrifty / SLOs & fleet", [
        panel("TTFT p95 (client view)", [(p95("thrifty_ttft_seconds"), "{{tier}}")], unit="s"),
        panel("Inter-token latency p95", [(p95("thrifty_itl_seconds"), "{{tier}}")], unit="s"),
        panel("Request duration p95", [(p95("thrifty_request_duration_seconds"), "{{tier}}")], unit="s"),
        panel("Error rate", [(ratio_or_zero(
            rate("thrifty_requests_total", NT + ',outcome!~"ok|client_error"'), rate("thrifty_requests_total")), "{{tier}}")],
            unit="percentunit"),
        panel("Requests per second by outcome", [(rate("thrifty_requests_total", NT, "tier, outcome"), "{{tier}} {{outcome}}")],
              unit="reqps"),
        panel("Replicas: desired vs healthy", [
            (f"sum by (tier) (thrifty_controller_desired_replicas{{{NT}}})", "{{tier}} desired"),
            (f"sum by (tier) (thrifty_replica_up{{{NT}}})", "{{tier}} healthy"),
        ]),
        panel("Queue: admission and engine waiting", [
            (f"sum by (tier) (thrifty_queue_depth{{{NT}}})", "{{tier}} admission"),
            (f"sum by (tier) (vllm:num_requests_waiting{{{NT}}})", "{{tier}} engine waiting"),
        ]),
        panel("KV-cache usage", [(f"avg by (tier) (vllm:kv_cache_usage_perc{{{NT}}})", "{{tier}}")], unit="percentunit"),
        panel("Engine TTFT p95 (vLLM)", [(p95("vllm:time_to_first_token_seconds"), "{{tier}}")], unit="s"),
        panel("Running requests per replica", [(f"thrifty_replica_running{{{NT}}}", "{{tier}} {{replica}}")]),
        panel("Controller: TTFT p95 by tier", [(f"thrifty_controller_slo_ttft_p95_seconds{{{NT}}}", "{{tier}}")], unit="s"),
        panel("Admission queue by service_tier lane", [
            (f"sum by (tier, lane) (thrifty_lane_queue_depth{{{NT}}})", "{{tier}} {{lane}}")],
            description="requests waiting in admission; priority is served first, flex and batch wait longest"),
        panel("Requests per second by lane and outcome", [
            (rate("thrifty_lane_requests_total", NS, "lane, outcome"), "{{lane}} {{outcome}}")], unit="reqps"),
        panel("Shed by lane: share shed, and flex shed for room", [
            (ratio_or_zero(rate("thrifty_lane_requests_total", NS + ',outcome="shed"', "lane"),
                           rate("thrifty_lane_requests_total", NS, "lane")), "{{lane}} share shed"),
            (rate("thrifty_lane_shed_for_room_total", NS, "lane"), "flex shed for {{lane}} /s"),
        ], description="flex waiters dropped from a full admission queue to queue a request of a better lane"),
        panel("Batch API: backlog and lines", [
            (f"sum(thrifty_batch_backlog{{{NS}}})", "backlog (lines)"),
            (rate("thrifty_batch_lines_total", NS, "result"), "{{result}} lines/s"),
        ], description="lines left in active batches (only with batch.store); deferred = shed for capacity, retried later. "
                       "Batch lines are not in the interactive SLO panels"),
    ]),
    "thrifty-caches-routing": ("Thrifty / Caches & routing", [
        panel("Cache hit rate by kind", [(ratio_or_zero(
            rate("thrifty_cache_lookups_total", NS + ',result="hit"', "kind"), rate("thrifty_cache_lookups_total", NS, "kind")),
            "{{kind}}")], unit="percentunit"),
        panel("Requests by cache outcome", [(rate("thrifty_requests_total", NT, "cache"), "{{cache}}")], unit="reqps"),
        panel("Cache entries", [(f"sum by (kind) (thrifty_cache_entries{{{NS}}})", "{{kind}}")]),
        panel("Cache bytes", [(f"sum by (kind) (thrifty_cache_bytes{{{NS}}})", "{{kind}}")], unit="bytes"),
        panel("Routing share by tier", [(
            f"{rate('thrifty_router_decisions_total')} / ignoring(tier) group_left "
            f"sum(rate(thrifty_router_decisions_total{{{NT}}}[{R}]))", "{{tier}}")], unit="percentunit"),
        panel("Router decisions by reason", [(rate("thrifty_router_decisions_total", NT, "tier, reason"), "{{tier}} {{reason}}")]),
        panel("Engine prefix-cache hit rate (vLLM)", [(ratio_or_zero(
            rate("vllm:prefix_cache_hits_total"), rate("vllm:prefix_cache_queries_total")), "{{tier}}")], unit="percentunit"),
        panel("Balancer picks by reason", [(rate("thrifty_balancer_picks_total", NT, "tier, reason"), "{{tier}} {{reason}}")]),
        panel("Speculative decoding acceptance (vLLM)", [(
            f"{rate('vllm:spec_decode_num_accepted_tokens_total')} / {rate('vllm:spec_decode_num_draft_tokens_total')}",
            "{{tier}}")], unit="percentunit"),
        panel("Shared cache (Redis): hits by origin", [
            (rate("thrifty_shared_cache_lookups_total", NS + ',result=~"hit.*"', "kind, result"), "{{kind}} {{result}}")],
            unit="reqps", w=8, description="exact: hits from Redis after a local miss; semantic: mirror hits on this "
                                          "pod's own entries (hit_local) or another pod's (hit_remote)"),
        panel("Shared cache: mirror lag", [
            (f"histogram_quantile(0.5, sum by (le) (rate(thrifty_shared_cache_mirror_lag_seconds_bucket{{{NS}}}[{R}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(thrifty_shared_cache_mirror_lag_seconds_bucket{{{NS}}}[{R}])))", "p99"),
            (f"max(thrifty_shared_cache_rebuild_seconds{{{NS}}})", "last rebuild (s)"),
        ], unit="s", w=8, description="another pod's insert to this mirror applying it; the issue's goal is p99 <= 250 ms"),
        panel("Shared cache: sync errors and pods using it", [
            (rate("thrifty_shared_cache_sync_errors_total", NS, "op"), "errors/s {{op}}"),
            (f"sum(thrifty_shared_cache_up{{{NS}}})", "pods with the tier up"),
        ], w=8, description="Redis failures by operation (each feeds the breaker); a pod whose breaker is open "
                            "answers from its local cache and reads 0"),
        panel("Quality retained per tier pair (fleet)", [
            (f"max by (kind, cheap_tier, reference_tier, bound) (thrifty_controller_quality_retained{{{NS}}})",
             "{{kind}} {{cheap_tier}}→{{reference_tier}} {{bound}}"),
        ], unit="percentunit", description="judged quality of a cheaper tier's answers (router) or semantic hits (cache) "
                                           "against the reference tier; lower = one-sided Wilson bound at "
                                           "quality.confidence, which the threshold must keep above quality.target"),
        panel("Router threshold in force and quality drops", [
            (f"max(thrifty_controller_router_threshold{{{NS}}})", "threshold"),
            (f"max by (cheap_tier) (thrifty_controller_quality_drop{{{NS}}})", "quality drop {{cheap_tier}}"),
        ], description="the calibrator's threshold pushed to the sidecars (0 until the first verdicts arrive); "
                       "quality drop 1 = the bound at that threshold is under quality.target"),
        panel("Semantic cache: false-hit rate", [
            (f"max by (route, bound) (thrifty_cache_false_hit_rate{{{NS}}})", "{{route}} {{bound}}")],
            unit="percentunit", w=8, description="judged semantic hits scoring below 0.5 since the similarity floor "
                                                 "last moved (worst pod), with its Wilson interval"),
        panel("Semantic cache: similarity floor in force", [
            (f"max(thrifty_cache_similarity_floor{{{NS}}})", "max pod"),
            (f"min(thrifty_cache_similarity_floor{{{NS}}})", "min pod"),
        ], w=8, description="cosine similarity a semantic hit needs; the cache watch raises a pod's floor by "
                            "cache_watch.step when precision's bound falls below cache_watch.precision_target"),
        panel("Shadow evaluation: calls, verdicts and skips per second", [
            (rate("thrifty_shadow_calls_total", NS, "tier, result"), "calls {{tier}} {{result}}"),
            (rate("thrifty_shadow_verdicts_total", NS, "kind, judge"), "verdicts {{kind}} {{judge}}"),
            (rate("thrifty_shadow_skipped_total", NS, "reason"), "skipped {{reason}}"),
        ], w=8, description="sampled answers re-asked of the reference tier after the reply was sent, and their judged pairs"),
    ]),
    "thrifty-drift-scaling": ("Thrifty / Drift & scaling", [
        panel("Active drift alerts", [(f"sum(thrifty_controller_drift_alerts{{{NS}}}) or on() vector(0)", "active")],
              kind="stat", w=6, description="a signal with no alert has no series: none reads as 0"),
        panel("Autoscaling paused", [(f"max(thrifty_controller_autoscaling_paused{{{NS}}})", "paused")], kind="stat", w=6),
        panel("Leader", [(f"max(thrifty_controller_is_leader{{{NS}}})", "leader")], kind="stat", w=6),
        panel("Connected sidecars", [(f"sum(thrifty_controller_sidecars{{{NS}}})", "sidecars")], kind="stat", w=6),
        panel("Desired replicas by tier", [(f"thrifty_controller_desired_replicas{{{NT}}}", "{{tier}}")]),
        panel("Scaling actions (per hour)", [(
            f"sum by (tier, direction) (increase(thrifty_controller_scale_actions_total{{{NT}}}[1h])) or on() vector(0)",
            "{{tier}} {{direction}}")], description="none in the last hour reads as 0"),
        panel("Drift alerts raised by signal (per hour)", [(
            f"sum by (signal) (increase(thrifty_controller_drift_alerts_total{{{NS}}}[1h])) or on() vector(0)",
            "{{signal}}")]),
        panel("Savings ratio vs cost per 1k (controller)", [
            (f"thrifty_controller_savings_ratio{{{NS}}}", "savings ratio"),
            (f"avg(thrifty_controller_cost_per_1k_requests_dollars{{{NT}}})", "cost per 1k ($)"),
        ]),
        panel("TTFT p95 vs SLO headroom", [(f"thrifty_controller_slo_ttft_p95_seconds{{{NT}}}", "{{tier}}")], unit="s"),
        panel("SLO error budget: burn rate and capacity factor", [
            (f"thrifty_controller_slo_burn_rate{{{NT}}}", "{{tier}} burn rate"),
            (f"thrifty_controller_capacity_factor{{{NT}}}", "{{tier}} capacity factor"),
        ], description="burn rate 1 = TTFT misses exactly at what slo.ttft_attainment allows; the autoscaler "
                       "plans with capacity x factor, raising it while the burn rate stays under 0.5"),
        panel("Speculative decoding acceptance by tier (sidecar view)", [(
            f"sum by (tier) (rate(thrifty_replica_spec_accepted_tokens{{{NT}}}[{R}])) / "
            f"sum by (tier) (rate(thrifty_replica_spec_draft_tokens{{{NT}}}[{R}]))", "{{tier}}")],
            unit="percentunit", description="accepted / draft tokens of the replicas' spec-decode counters as the "
                                            "sidecar scrapes them (the same figure as the fleet API's spec_acceptance); "
                                            "the learned per-replica capacity is only in the fleet API and the TUI"),
    ]),
}


def template_variables() -> dict[str, Any]:
    def var(name: str, query: str) -> dict[str, Any]:
        return {
            "name": name, "label": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }

    return {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {"selected": True, "text": "Prometheus", "value": "prometheus"}},
        var("namespace", "label_values(thrifty_requests_total, namespace)"),
        var("tier", 'label_values(thrifty_requests_total{namespace=~"$namespace"}, tier)'),
    ]}


def build(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    out, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append({
            "id": i, "type": p["type"], "title": p["title"], "description": p["description"],
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": p["w"], "h": p["h"]},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if p["type"] == "timeseries"
            else {"reduceOptions": {"calcs": ["lastNotNull"]}},
            "targets": [{"refId": chr(ord("A") + j), "expr": t["expr"], "legendFormat": t["legendFormat"],
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, t in enumerate(p["targets"])],
        })
        x += p["w"]
        row_h = max(row_h, p["h"])
    return {
        "uid": uid, "title": title, "tags": ["thrifty"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": template_variables(), "annotations": {"list": []}, "panels": out,
        "links": [{"type": "dashboards", "tags": ["thrifty"], "asDropdown": True, "title": "Thrifty"}],
    }


def render_all() -> dict[str, str]:
    return {f"{uid}.json": json.dumps(build(uid, title, panels), indent=2) + "\n" for uid, (title, panels) in DASHBOARDS.items()}


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, text in render_all().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
