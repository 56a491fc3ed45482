"""JSON logs with a request id; prompts and API keys are never written.

Startup and replica events go through stdlib `logging` with a JSON formatter. The
hot path writes one access line per request through `AccessLog`, a single
`json.dumps` + write, to keep per-request cost low.
"""

from __future__ import annotations

import json
import logging
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
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
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
