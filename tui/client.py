"""Async client for the controller's HTTP API (docs/contracts.md), used by the TUI.

Every call is non-blocking (aiohttp) and bounded by a short timeout, so a dead or slow
controller turns into a `ControllerError` the console can show in its banner instead
of freezing the screen.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp


class ControllerError(Exception):
    """The controller could not be reached or refused a request; `str()` is one line."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unreachable(self) -> bool:
        """True when no HTTP answer came back at all (connection refused, timeout...)."""
        return self.status is None


@dataclass(slots=True)
class FleetSnapshot:
    """One consistent read of everything the console shows."""

    fleet: dict[str, Any]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def validate_base_url(url: str) -> str:
    """Return the URL without a trailing slash; raise ValueError with one line if unusable."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"controller URL must look like http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


class ControllerClient:
    """Thin typed wrapper over the controller API; one aiohttp session, reused."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 3.0) -> None:
        self.base_url = validate_base_url(base_url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ControllerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base_url + path
        try:
            async with self._http().request(method, url, json=body) as resp:
                text = await resp.text()
                status = resp.status
        except asyncio.TimeoutError:
            raise ControllerError(f"timed out talking to {self.base_url}") from None
        except aiohttp.ClientError as exc:
            raise ControllerError(f"cannot reach {self.base_url}: {exc.__class__.__name__}: {exc}") from None
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            raise ControllerError(f"{method} {path}: HTTP {status}, not JSON", status=status) from None
        if status >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            message = err.get("message") if isinstance(err, dict) else None
            raise ControllerError(f"{method} {path}: HTTP {status}: {message or text[:200]}", status=status)
        return data

    async def fleet(self) -> dict[str, Any]:
        return await self._request("GET", "/api/v1/fleet")

    async def alerts(self) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/api/v1/alerts")).get("alerts", []))

    async def decisions(self) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/api/v1/decisions")).get("decisions", []))

    async def snapshot(self) -> FleetSnapshot:
        """Fleet, alerts and decisions fetched concurrently."""
        fleet, alerts, decisions = await asyncio.gather(self.fleet(), self.alerts(), self.decisions())
        return FleetSnapshot(fleet=fleet, alerts=alerts, decisions=decisions)

    async def set_autoscaling(self, paused: bool) -> bool:
        path = "/api/v1/autoscaling/pause" if paused else "/api/v1/autoscaling/resume"
        return bool((await self._request("POST", path, {})).get("autoscaling_paused"))

    async def pin_tier(self, tier: str, minimum: int | None, maximum: int | None) -> dict[str, Any]:
        """Pin a tier's replica bounds; `None, None` unpins (back to the config's bounds)."""
        return await self._request("POST", f"/api/v1/tiers/{quote(tier, safe='')}/pin", {"min": minimum, "max": maximum})

    async def set_router_threshold(self, threshold: float) -> float:
        data = await self._request("POST", "/api/v1/router/threshold", {"threshold": threshold})
        return float(data["router_threshold"])
