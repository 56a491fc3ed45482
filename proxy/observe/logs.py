"""JSON logs with a request id; prompts, API keys and header values are never written.

Startup and replica events go through stdlib `logging` with a JSON formatter. The
hot path writes one access line per request through `AccessLog`, a single
`json.dumps` + write, to keep per-request cost low.

An exception is logged as its type and where it was raised, never its message or
traceback text: parser errors quote the offending bytes (aiohttp's quote a malformed
`Authorization` line whole), so aiohttp's loggers go through the same formatter.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

LOGGER_NAME = "thrifty.proxy"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = describe_exception(record.exc_info[1])
        return json.dumps(out, default=str)


def describe_exception(exc: BaseException) -> str:
    """`TypeName at file.py:line` of the innermost frame: enough to find it, no data from the request."""
    tb = exc.__traceback__
    if tb is None:
        return type(exc).__name__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{type(exc).__name__} at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


def setup_logging(level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    aiohttp_logger = logging.getLogger("aiohttp")  # else its tracebacks reach stderr through the root
    aiohttp_logger.handlers[:] = [handler]
    aiohttp_logger.setLevel(max(logging.WARNING, logger.level))
    aiohttp_logger.propagate = False
    return logger


class AccessLog:
    """One JSON line per finished request (fields chosen by the server: no prompt, no key)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled

    def write(self, fields: dict[str, Any]) -> None:
        if self.enabled:
            fields["ts"] = round(time.time(), 3)
            self.stream.write(json.dumps(fields) + "\n")
