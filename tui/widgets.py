"""The console's panels, one class per concern. Each panel has `show(snapshot)` that
updates its children in place (no remove/mount), so a refresh every second never
flickers and never loses the cursor or scroll position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Sparkline, Static

from thrifty.tui import formatting as fmt
from thrifty.tui.client import FleetSnapshot

Cell = str | Text
Row = tuple[str, Sequence[Cell]]


def _same(a: object, b: object) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style)
    return a == b


def sync_rows(table: DataTable, rows: Sequence[Row]) -> None:
    """Make `table` show `rows` (key, cells) with the fewest changes: drop vanished rows,
    update changed cells, append new rows; rebuild only when the order itself changed."""
    columns = [c.key for c in table.ordered_columns]
    wanted = {key for key, _ in rows}
    for key in [r.key.value for r in table.ordered_rows]:
        if key not in wanted:
            table.remove_row(key)
    present = [r.key.value for r in table.ordered_rows]
    if present != [key for key, _ in rows[: len(present)]]:
        cursor_key = present[table.cursor_row] if 0 <= table.cursor_row < len(present) else None
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        keys = [key for key, _ in rows]
        if cursor_key in keys:
            table.move_cursor(row=keys.index(cursor_key), animate=False)
        return
    for key, cells in rows[: len(present)]:
        for column, value in zip(columns, cells):
            if not _same(table.get_cell(key, column), value):
                table.update_cell(key, column, value, update_width=True)
    for key, cells in rows[len(present):]:
        table.add_row(*cells, key=key)


class MeasuredDataTable(DataTable):
    """A DataTable that redraws once its idle pass has measured new cells.

    Textual's DataTable fits column widths to new or updated cells on its idle pass, but
    caches rendered lines without the widths in the key, so lines drawn before that pass
    (a busy CPU lets a frame in first) keep the old widths and show truncated cells until
    some other change (Textualize/textual#3533). Dropping the caches after a measuring
    pass costs one redraw per update, at most once a poll."""

    async def _on_idle(self, event: events.Idle) -> None:
        measuring = bool(self._updated_cells or self._require_update_dimensions)
        await super()._on_idle(event)
        if measuring:
            self._clear_caches()
            self.refresh()


def _table(columns: Sequence[tuple[str, str]], table_id: str, *, cursor: bool) -> DataTable:
    table: DataTable = MeasuredDataTable(id=table_id, cursor_type="row" if cursor else "none", zebra_stripes=False)
    for label, key in columns:
        table.add_column(label, key=key)
    return table


class StatusLine(Static):
    """Top line: which controller, autoscaler state, router threshold, freshness."""

    def show(self, snap: FleetSnapshot, controller_url: str) -> None:
        f = snap.fleet
        paused = bool(f.get("autoscaling_paused"))
        thr = f.get("router_threshold")
        line = Text.assemble(
            ("thrifty ", "bold"),
            (fmt.truncate(controller_url.split("://", 1)[-1], 24), "dim"),
            "  autoscaling ",
            ("PAUSED", "bold black on yellow") if paused else ("on", "bold green"),
            "  threshold ",
            (fmt.MISSING if thr is None else f"{float(thr):.2f}", "bold"),
            f"  {fmt.count(f.get('sidecars'))} sidecar{'' if f.get('sidecars') == 1 else 's'}",
            (f"  {fmt.clock(f.get('time'))}Z", "dim"),
        )
        self.update(line)


class QualityLine(Static):
    """Second line: quality retained vs target with its bound, the ledger's measured vs modelled
    savings, and a red marker while a quality_drop alert is active (the threshold in force is on
    the status line above)."""

    def show(self, snap: FleetSnapshot) -> None:
        q = snap.fleet.get("quality")
        self.set_class(bool(isinstance(q, dict) and q.get("alerts")), "-alerting")
        self.update(fmt.quality_line(q))


class ConnectionBanner(Static):
    """Shown only while polls fail; one line that fits the screen, the poll loop keeps retrying."""

    def show_error(self, message: str, attempts: int, last_ok: float | None, status: int | None = None) -> None:
        stale = f" · data from {fmt.clock(last_ok)} UTC" if last_ok else ""
        if status in (401, 403):
            line = f"⚠ token rejected: pass --token or set THRIFTY_CONTROLLER_TOKEN · retrying{stale}"
        elif status is None:
            line = f"⚠ controller unreachable · try {attempts}{stale} · {message}"
        else:
            line = f"⚠ controller error · try {attempts}{stale} · {message}"
        width = max(20, (self.app.size.width if self.is_attached else 80) - 2)
        self.update(fmt.truncate(line, width))
        self.add_class("-visible")

    def clear_error(self) -> None:
        self.remove_class("-visible")


SAVINGS_HINT = "savings trend: after the first minute of traffic"
ALERTS_HINT = "none yet: the detectors learn a baseline from ~10 min of traffic, then flag changes here"
DECISIONS_HINT = "none yet: the autoscaler reviews each tier every control round and lists every change of replicas here"


class CostPanel(Vertical):
    """Dollars per hour now vs the baseline, the savings ratio and its history."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.figures = Static(id="cost-figures")
        self.spark = Sparkline([0.0], id="savings-spark")
        self.hint = Static(SAVINGS_HINT, id="savings-hint")

    def compose(self) -> ComposeResult:
        yield self.figures
        yield self.spark
        yield self.hint

    def on_mount(self) -> None:
        self.border_title = "Cost"

    def show(self, snap: FleetSnapshot) -> None:
        f: dict[str, Any] = snap.fleet.get("fleet") or {}
        figures = Text.assemble(
            ("now ", "dim"), (f"{fmt.money(f.get('dollars_per_hour'))}/h", "bold"),
            ("  baseline ", "dim"), f"{fmt.money(f.get('baseline_dollars_per_hour'))}/h\n",
            ("saved ", "dim"), (fmt.pct(f.get("savings_ratio"), 1), "bold green"),
            ("  ", ""), (f"{fmt.money(f.get('cost_per_1k_requests'))}/1k req\n", ""),
            ("load ", "dim"), f"{fmt.rate(f.get('requests_per_s'))} req/s",
            ("  errors ", "dim"), fmt.pct(f.get("error_rate"), 1),
        )
        self.figures.update(figures)
        history = [float(x) for x in (f.get("savings_history") or []) if isinstance(x, (int, float))]
        self.spark.data = history or [0.0]
        self.spark.display = bool(history)  # an empty sparkline would draw a full-width bar
        self.hint.display = not history


class LeversPanel(Static):
    """Cache hit rates by kind, routing share by tier, speculative-decoding acceptance, and the
    shared (Redis) cache tier when the fleet has one: its hit rate, mirror lag p99, sync
    errors and pods using it."""

    def on_mount(self) -> None:
        self.border_title = "Caches · routing"

    def show(self, snap: FleetSnapshot) -> None:
        f: dict[str, Any] = snap.fleet.get("fleet") or {}
        tiers: list[dict[str, Any]] = snap.fleet.get("tiers") or []
        hits = f.get("cache_hit_rate") or {}
        text = Text.assemble(
            ("cache  ", "dim"), "exact ", (fmt.pct(hits.get("exact"), 1), "bold"),
            "  semantic ", (fmt.pct(hits.get("semantic"), 1), "bold"), "\n",
            ("route  ", "dim"),
        )
        text.append("  ".join(f"{t.get('name')} {fmt.pct(t.get('routing_share'))}" for t in tiers) or fmt.MISSING)
        text.append("\nspec   ", "dim")
        spec = [f"{t.get('name')} {fmt.pct(t.get('spec_acceptance'))}" for t in tiers if t.get("spec_acceptance") is not None]
        text.append("  ".join(spec) or "off")
        shared = fmt.shared_cache(f.get("shared_cache"))
        if shared is not None:  # a fleet without a shared (Redis) tier keeps three lines
            text.append("\nshared ", "dim")
            text.append_text(shared)
        self.update(text)


# Routing share is on the levers panel's `route` line; its room here holds the learned capacity
# (tokens/s per replica) and the speculative-decoding acceptance per tier.
TIER_COLUMNS = [("tier / replica", "name"), ("ready", "ready"), ("min-max", "bounds"), ("queue", "queue"),
                ("KV", "kv"), ("TTFT/SLO s", "ttft"), ("tok/s", "capacity"), ("spec", "spec"), ("$/h", "cost")]


class TablePanel(Vertical):
    """A bordered panel around one DataTable, built up front so `show` never queries; an
    optional hint takes the table's place while it has no rows, saying what will appear."""

    def __init__(self, columns: Sequence[tuple[str, str]], table_id: str, *, cursor: bool, id: str | None = None,
                 hint: str | None = None, table: DataTable | None = None) -> None:
        super().__init__(id=id)
        self.table = table or _table(columns, table_id, cursor=cursor)
        self.hint_text = hint
        self.hint = Static(hint or "", classes="empty-hint")
        self.hint.display = False

    def compose(self) -> ComposeResult:
        yield self.table
        yield self.hint

    def show_hint_when_empty(self) -> None:
        empty = self.table.row_count == 0 and bool(self.hint_text)
        self.hint.display = empty
        self.table.display = not empty


class TierRowsTable(MeasuredDataTable):
    """The tiers table: ↑/↓ move between tier rows only; Enter opens or closes a tier's replicas."""

    def _tier_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.ordered_rows) if str(r.key.value).startswith("tier:")]

    def action_cursor_down(self) -> None:
        below = [i for i in self._tier_rows() if i > self.cursor_row]
        if below:
            self.move_cursor(row=below[0], animate=False)

    def action_cursor_up(self) -> None:
        above = [i for i in self._tier_rows() if i < self.cursor_row]
        if above:
            self.move_cursor(row=above[-1], animate=False)


class TiersTable(TablePanel):
    """Each tier (its replicas under it once opened with Enter): readiness, queue, KV-cache use,
    TTFT vs SLO, one replica's learned capacity (tokens/s), speculative-decoding acceptance, and
    what its running replicas cost per hour."""

    def __init__(self, *, id: str | None = None) -> None:
        table = TierRowsTable(id="tiers-table", cursor_type="row", zebra_stripes=False)
        for label, key in TIER_COLUMNS:
            table.add_column(label, key=key)
        super().__init__(TIER_COLUMNS, "tiers-table", cursor=True, id=id, table=table)
        self.expanded: set[str] = set()
        self._last: FleetSnapshot | None = None

    def on_mount(self) -> None:
        self.border_title = "Tiers & replicas (Enter: replicas)"

    def selected_tier(self) -> str | None:
        """The tier under the cursor (a replica row selects its tier)."""
        table = self.table
        if table.row_count == 0:
            return None
        key = table.ordered_rows[min(table.cursor_row, table.row_count - 1)].key.value or ""
        return key.split(":", 2)[1]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        name = self.selected_tier()
        if name is None:
            return
        self.expanded.symmetric_difference_update({name})
        if self._last is not None:
            self.show(self._last)

    def show(self, snap: FleetSnapshot) -> None:
        self._last = snap
        rows: list[Row] = []
        for t in snap.fleet.get("tiers") or []:
            name = str(t.get("name"))
            bounds = f"{fmt.count(t.get('min'))}-{fmt.count(t.get('max'))}"
            ready, desired = t.get("replicas_ready"), t.get("replicas_desired")
            ready_style = "green" if ready == desired else "yellow"
            replicas = t.get("replicas") or []
            opened = name in self.expanded
            marker = ("▾ " if opened else "▸ ") if replicas else "  "
            cost = t.get("replica_dollars_per_hour")
            rows.append((f"tier:{name}", (
                Text(marker + fmt.truncate(name, 14), style="bold"),
                Text(f"{fmt.count(ready)}/{fmt.count(desired)}", style=ready_style),
                Text(bounds + (" pin" if t.get("pinned") else ""), style="bold yellow" if t.get("pinned") else ""),
                fmt.count(t.get("queue")),
                fmt.pct(t.get("kv_cache_usage")),
                fmt.latency_vs_slo(t.get("ttft_p95_ms"), t.get("slo_ttft_p95_ms")),
                fmt.tokens_rate(t.get("capacity_tokens_s")),
                fmt.pct(t.get("spec_acceptance")),
                fmt.money(cost if cost is not None else t.get("dollars_per_hour")),
            )))
            if not opened:
                continue
            for r in replicas:
                url = str(r.get("url"))
                healthy = bool(r.get("healthy"))
                rows.append((f"rep:{name}:{url}", (
                    Text(fmt.replica_label(url), style="dim"),
                    Text("up" if healthy else "DOWN", style="green" if healthy else "bold red"),
                    "",
                    fmt.count(r.get("waiting")),
                    fmt.pct(r.get("kv_cache_usage")),
                    fmt.latency_vs_slo(r.get("ttft_p95_ms"), t.get("slo_ttft_p95_ms")),
                    "",
                    "",
                    "",
                )))
        sync_rows(self.table, rows)


ALERT_COLUMNS = [("signal", "signal"), ("tier", "tier"), ("change", "change"), ("at", "at")]


class AlertsPanel(TablePanel):
    """Drift alerts, active ones first and in bold."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(ALERT_COLUMNS, "alerts-table", cursor=False, id=id, hint=ALERTS_HINT)

    def on_mount(self) -> None:
        self.border_title = "Drift alerts"

    def show(self, snap: FleetSnapshot) -> None:
        alerts = sorted(snap.alerts, key=lambda a: (not a.get("active"), -(a.get("detected_time") or 0)))[:50]
        active = sum(1 for a in alerts if a.get("active"))
        self.border_title = f"Drift alerts ({active} active)"
        self.set_class(active > 0, "-alerting")
        rows: list[Row] = []
        for a in alerts:
            style = "bold red" if a.get("active") else "dim"
            rows.append((str(a.get("id")), (
                Text(fmt.truncate(a.get("signal"), 14), style=style),
                Text(fmt.truncate(a.get("tier") or "fleet", 8), style=style),
                Text(fmt.change(a.get("direction"), a.get("size")), style=style),
                Text(fmt.clock(a.get("detected_time") or a.get("start_time"))[:5], style=style),
            )))
        sync_rows(self.table, rows)
        self.show_hint_when_empty()


DECISION_COLUMNS = [("time", "time"), ("tier", "tier"), ("scale", "change"), ("reason", "reason")]


class DecisionsPanel(TablePanel):
    """The autoscaler's decisions, oldest first, following the newest like a log."""

    MAX_ROWS = 200

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(DECISION_COLUMNS, "decisions-table", cursor=False, id=id, hint=DECISIONS_HINT)

    def on_mount(self) -> None:
        self.border_title = "Scaling decisions"

    def show(self, snap: FleetSnapshot) -> None:
        decisions = sorted(snap.decisions, key=lambda d: d.get("time") or 0)[-self.MAX_ROWS:]
        rows: list[Row] = []
        seen: dict[str, int] = {}
        for d in decisions:
            base = f"{d.get('time')}:{d.get('tier')}:{d.get('from')}:{d.get('to')}"
            seen[base] = seen.get(base, 0) + 1
            flag = "" if d.get("dry_run") or d.get("applied") else "not applied: "
            style = "dim italic" if d.get("dry_run") else ("dim" if flag else "")
            rows.append((f"{base}#{seen[base]}", (
                fmt.clock(d.get("time")),
                fmt.truncate(d.get("tier"), 8),
                Text(f"{fmt.count(d.get('from'))}→{fmt.count(d.get('to'))}", style=style or "bold"),
                Text(fmt.truncate(flag + str(d.get("reason") or ""), 60), style=style),
            )))
        dry = any(d.get("dry_run") for d in decisions)
        self.border_title = "Scaling decisions" + (" (dry-run)" if dry else "")
        table = self.table
        grew = len(rows) > table.row_count
        sync_rows(table, rows)
        self.show_hint_when_empty()
        if grew:
            table.scroll_end(animate=False)
