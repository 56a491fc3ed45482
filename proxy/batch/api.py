"""The Batch API's HTTP surface, as OpenAI defines it: `/v1/files` and `/v1/batches`.

Files: upload (multipart `file` + `purpose`), retrieve, list, content, delete. Batches:
create (from an uploaded `batch` file whose lines are `{"custom_id", "method": "POST",
"url", "body"}`), retrieve, list (`limit`, `after`), cancel. Everything is scoped to the
caller's tenant (the same rule as the caches: hashed API key, or the trusted tenant
header): one tenant never sees another's files or batches. Errors are OpenAI-shaped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from thrifty.config import TenancySettings
from thrifty.proxy.batch.runner import ENDPOINT_PATHS
from thrifty.proxy.batch.store import BatchStore
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.request.tenant import client_address, tenant_of

WINDOWS_S = {"24h": 24 * 3600}  # the completion windows OpenAI accepts
MAX_LINES = 50_000  # OpenAI's limit per batch
PURPOSES = {"batch", "batch_output", "fine-tune", "assistants", "vision", "user_data", "evals"}


class BatchApi:
    def __init__(self, store: BatchStore | None, tenancy: TenancySettings, *, max_file_bytes: int,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.tenancy = tenancy
        self.max_file_bytes = max_file_bytes
        self.on_change = on_change  # a batch was created or cancelled (wakes the runner)

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self._guard(self.create_file))
        r.add_get("/v1/files", self._guard(self.list_files))
        r.add_get("/v1/files/{id}", self._guard(self.get_file))
        r.add_delete("/v1/files/{id}", self._guard(self.delete_file))
        r.add_get("/v1/files/{id}/content", self._guard(self.file_content))
        r.add_post("/v1/batches", self._guard(self.create_batch))
        r.add_get("/v1/batches", self._guard(self.list_batches))
        r.add_get("/v1/batches/{id}", self._guard(self.get_batch))
        r.add_post("/v1/batches/{id}/cancel", self._guard(self.cancel_batch))

    def _guard(self, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self.store is None:
                return ApiError(404, "The Batch API is not enabled on this sidecar (set batch.store in the config)",
                                code="batch_api_disabled").to_response()
            try:
                return await handler(request, self._tenant(request))
            except ApiError as exc:
                return exc.to_response()
        return wrapped

    def _tenant(self, request: web.Request) -> str:
        return tenant_of(request.headers.get("Authorization"), request.headers.get("X-Thrifty-Tenant"),
                         client_address(request), self.tenancy)

    # ---------------------------------------------------------------- files
    async def create_file(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "upload a file as multipart/form-data with fields `file` and `purpose`", param="file")
        purpose, filename, content = None, "upload.jsonl", b""
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()  # type: ignore[union-attr]
            elif part.name == "file":
                filename = part.filename or filename  # type: ignore[union-attr]
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 16):  # type: ignore[union-attr]
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise ApiError(413, f"the file is larger than the limit of {self.max_file_bytes} bytes", param="file")
                    chunks.append(chunk)
                content = b"".join(chunks)
        if purpose not in PURPOSES:
            raise ApiError(400, f"'purpose' must be one of {sorted(PURPOSES)}", param="purpose")
        if not content:
            raise ApiError(400, "'file' is required and must not be empty", param="file")
        return web.json_response(await self.store.add_file(tenant, purpose, filename, content))

    async def list_files(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        data = await self.store.files(tenant, request.query.get("purpose"), _limit(request, 10_000))
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def get_file(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        found = await self.store.file(tenant, request.match_info["id"])
        if found is None:
            raise _no_such("file", request.match_info["id"])
        return web.json_response(found)

    async def delete_file(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        file_id = request.match_info["id"]
        if not await self.store.delete_file(tenant, file_id):
            raise _no_such("file", file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        content = await self.store.file_content(tenant, request.match_info["id"])
        if content is None:
            raise _no_such("file", request.match_info["id"])
        return web.Response(body=content, content_type="application/octet-stream")

    # ---------------------------------------------------------------- batches
    async def create_batch(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        endpoint, window, file_id = body.get("endpoint"), body.get("completion_window"), body.get("input_file_id")
        if endpoint not in ENDPOINT_PATHS:
            raise ApiError(400, f"'endpoint' must be one of {sorted(ENDPOINT_PATHS)}", param="endpoint")
        if window not in WINDOWS_S:
            raise ApiError(400, f"'completion_window' must be one of {sorted(WINDOWS_S)}", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
            raise ApiError(400, "'metadata' must be an object of strings", param="metadata")
        if not isinstance(file_id, str):
            raise ApiError(400, "'input_file_id' is required", param="input_file_id")
        meta = await self.store.file(tenant, file_id)
        content = await self.store.file_content(tenant, file_id)
        if meta is None or content is None:
            raise _no_such("file", file_id, param="input_file_id")
        if meta["purpose"] != "batch":
            raise ApiError(400, f"file {file_id} has purpose {meta['purpose']!r}, not 'batch'", param="input_file_id")
        lines = parse_batch_file(content, endpoint)
        created = await self.store.create_batch(tenant, endpoint, file_id, WINDOWS_S[window], window, metadata, lines)
        self.on_change()
        return web.json_response(created)

    async def get_batch(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        found = await self.store.batch(tenant, request.match_info["id"])
        if found is None:
            raise _no_such("batch", request.match_info["id"])
        return web.json_response(found)

    async def list_batches(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        data = await self.store.batches(tenant, _limit(request, 100), request.query.get("after"))
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": False})

    async def cancel_batch(self, request: web.Request, tenant: str) -> web.Response:
        assert self.store is not None
        found = await self.store.cancel(tenant, request.match_info["id"])
        if found is None:
            raise _no_such("batch", request.match_info["id"])
        self.on_change()
        return web.json_response(found)


def parse_batch_file(content: bytes, endpoint: str) -> list[tuple[str, dict[str, Any]]]:
    """The lines of a batch input file; a 400 naming the first bad line."""
    lines: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            raise ApiError(400, f"input file line {number} is not valid JSON", param="input_file_id") from None
        if not isinstance(item, dict):
            raise ApiError(400, f"input file line {number} must be a JSON object", param="input_file_id")
        custom_id, body = item.get("custom_id"), item.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            raise ApiError(400, f"input file line {number}: 'custom_id' must be a non-empty string", param="input_file_id")
        if custom_id in seen:
            raise ApiError(400, f"input file line {number}: custom_id {custom_id!r} repeats", param="input_file_id")
        if item.get("method", "POST") != "POST" or item.get("url") != endpoint:
            raise ApiError(400, f"input file line {number}: method must be POST and url {endpoint!r} (the batch's endpoint)",
                           param="input_file_id")
        if not isinstance(body, dict):
            raise ApiError(400, f"input file line {number}: 'body' must be an object", param="input_file_id")
        seen.add(custom_id)
        lines.append((custom_id, body))
        if len(lines) > MAX_LINES:
            raise ApiError(400, f"a batch holds at most {MAX_LINES} requests", param="input_file_id")
    if not lines:
        raise ApiError(400, "the input file has no requests", param="input_file_id")
    return lines


def _limit(request: web.Request, default: int) -> int:
    try:
        return max(1, min(int(request.query.get("limit", default)), 10_000))
    except ValueError:
        raise ApiError(400, "'limit' must be an integer", param="limit") from None


def _no_such(kind: str, ident: str, *, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: {ident}", param=param, code="not_found")
