"""The controller's HTTP API for the TUI (docs/contracts.md), plus /healthz and /metrics."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from thrifty.controller.service import ControlPlane

PLANE = web.AppKey("plane", ControlPlane)
TOKEN = web.AppKey("token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in ("/healthz", "/metrics"):
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), request.app[TOKEN].encode()):
            return error(401, "missing or wrong bearer token", "authentication_error")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason, "invalid_request_error" if exc.status < 500 else "server_error")
        raise


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    return data


async def fleet(request: web.Request) -> web.Response:
    return web.json_response(request.app[PLANE].fleet_json())


async def alerts(request: web.Request) -> web.Response:
    return web.json_response(request.app[PLANE].alerts_json())


async def decisions(request: web.Request) -> web.Response:
    return web.json_response(request.app[PLANE].decisions_json())


async def pause(request: web.Request) -> web.Response:
    await _body(request)
    request.app[PLANE].pause(True)
    return web.json_response({"autoscaling_paused": True})


async def resume(request: web.Request) -> web.Response:
    await _body(request)
    request.app[PLANE].pause(False)
    return web.json_response({"autoscaling_paused": False})


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    if key not in data:
        raise web.HTTPBadRequest(reason=f"'{key}' is required (an integer >= 0, or null to unpin)")
    v = data[key]
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise web.HTTPBadRequest(reason=f"'{key}' must be an integer >= 0 or null")
    return v


async def pin(request: web.Request) -> web.Response:
    plane = request.app[PLANE]
    name = request.match_info["name"]
    if name not in [t.name for t in plane.config.tiers]:
        raise web.HTTPNotFound(reason=f"no tier named {name!r}")
    data = await _body(request)
    lo, hi = _opt_int(data, "min"), _opt_int(data, "max")
    if (lo is None) != (hi is None):
        raise web.HTTPBadRequest(reason="set both 'min' and 'max', or both null to unpin")
    try:
        plane.pin(name, lo, hi)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    return web.json_response(plane.tier_json(name))


async def router_threshold(request: web.Request) -> web.Response:
    data = await _body(request)
    v = data.get("threshold")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise web.HTTPBadRequest(reason="'threshold' must be a number in [0, 1]")
    request.app[PLANE].set_router_threshold(float(v))
    return web.json_response({"router_threshold": float(v)})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[PLANE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(plane: ControlPlane, token: str) -> web.Application:
    if not token:
        raise ValueError("the controller API needs a bearer token")
    app = web.Application(middlewares=[auth_and_errors])
    app[PLANE] = plane
    app[TOKEN] = token
    app.router.add_get("/api/v1/fleet", fleet)
    app.router.add_get("/api/v1/alerts", alerts)
    app.router.add_get("/api/v1/decisions", decisions)
    app.router.add_post("/api/v1/autoscaling/pause", pause)
    app.router.add_post("/api/v1/autoscaling/resume", resume)
    app.router.add_post("/api/v1/tiers/{name}/pin", pin)
    app.router.add_post("/api/v1/router/threshold", router_threshold)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
