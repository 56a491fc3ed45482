"""Redis key layout and entry codec of the shared cache tier.

Keys are Redis Cluster compatible: every key carries a hash tag (`{...}`) derived from the
tenant (exact entries) or the tenant+context partition (semantic entries), so one tenant's
partition lives in one slot and nothing needs a cross-slot command. Key names hold only
hashes, never a prompt. Values are zlib-compressed and refused above a size cap.

Layout (prefix `thr` by default):
  {prefix}:x:{<tenant tag>}:<request key>     exact answer (zlib JSON), PX = TTL
  {prefix}:s:{<partition tag>}:<entry id>     semantic entry (packed, see `pack_entry`), PX = TTL
  {prefix}:s:stream                           Redis Stream of semantic puts/deletes (one key)
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from thrifty.proxy.levers.exact_cache import canonical_json

_HEADER = struct.Struct("<IHq")  # partition length, vector dim, expiry (unix ms)


class EntryTooLarge(ValueError):
    """The compressed entry is over the configured cap; it is not shared."""


def tag(value: str) -> str:
    """A short hash for a hash tag: the slot is chosen by it, the value never appears."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def exact_key(prefix: str, tenant: str, request_key: str) -> str:
    return f"{prefix}:x:{{{tag(tenant)}}}:{request_key}"


def semantic_key(prefix: str, partition: str, text: str) -> str:
    """Entry id from partition + question, so two pods storing the same question share one entry."""
    entry = hashlib.sha256(f"{partition}\x00{text}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"{prefix}:s:{{{tag(partition)}}}:{entry}"


def semantic_match(prefix: str) -> str:
    return f"{prefix}:s:{{*}}:*"


def stream_key(prefix: str) -> str:
    return f"{prefix}:s:stream"


def pack_body(body: dict[str, Any], cap: int) -> bytes:
    data = zlib.compress(canonical_json(body).encode(), 6)
    if len(data) > cap:
        raise EntryTooLarge(f"compressed answer is {len(data)} bytes, cap {cap}")
    return data


def unpack_body(data: bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(data))


@dataclass(slots=True)
class SemanticEntry:
    partition: str
    text: str
    vector: np.ndarray
    body: dict[str, Any]
    expires_ms: int  # unix time in ms: pods share wall clocks, not monotonic ones


def pack_entry(entry: SemanticEntry, cap: int) -> bytes:
    """header | partition | float32 vector | zlib(JSON {q, a}); EntryTooLarge over `cap`."""
    vector = np.ascontiguousarray(entry.vector, dtype=np.float32)
    payload = zlib.compress(canonical_json({"q": entry.text, "a": entry.body}).encode(), 6)
    part = entry.partition.encode()
    blob = _HEADER.pack(len(part), vector.shape[0], entry.expires_ms) + part + vector.tobytes() + payload
    if len(blob) > cap:
        raise EntryTooLarge(f"compressed entry is {len(blob)} bytes, cap {cap}")
    return blob


def unpack_entry(blob: bytes) -> SemanticEntry:
    plen, dim, expires_ms = _HEADER.unpack_from(blob)
    at = _HEADER.size
    partition = blob[at:at + plen].decode()
    at += plen
    vector = np.frombuffer(blob, dtype=np.float32, count=dim, offset=at).copy()
    at += dim * 4
    payload = json.loads(zlib.decompress(blob[at:]))
    return SemanticEntry(partition=partition, text=payload["q"], vector=vector, body=payload["a"], expires_ms=expires_ms)
