"""OpenAI-shaped errors: every failure the client sees is `{"error": {...}}` JSON.

One exception type carries status, message and type from wherever it is raised
(validation, admission, relay) to the one place in the server that renders it, so
no step has to know how responses are built.
"""

from __future__ import annotations

import json

from aiohttp import web

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """A request that ends in an error response; `outcome` is the metrics label."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        self.outcome = outcome or ("client_error" if status < 500 else "upstream_error")

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def render(self, request_id: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body): the one rendering of an error, for the raw front and aiohttp alike."""
        headers = {"Content-Type": "application/json"}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        if request_id:
            headers["X-Request-Id"] = request_id
        return self.status, headers, json.dumps(self.body()).encode()

    def to_response(self, request_id: str | None = None) -> web.Response:
        status, headers, body = self.render(request_id)
        return web.Response(status=status, body=body, headers=headers)

    def sse_event(self) -> bytes:
        """The terminating event for a stream that fails after its first byte."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\ndata: [DONE]\n\n"


def upstream_error_body(status: int, raw: bytes) -> bytes:
    """Pass an upstream's OpenAI-shaped error through; wrap anything else so it is one."""
    try:
        parsed = json.loads(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return raw
        if isinstance(parsed, dict) and "message" in parsed and "object" in parsed:  # vLLM's ErrorResponse
            return json.dumps({"error": parsed}).encode()
    except ValueError:
        pass
    text = raw[:500].decode("utf-8", "replace").strip() or f"upstream answered {status}"
    return json.dumps(ApiError(status, text).body()).encode()
