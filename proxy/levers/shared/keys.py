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

_HEADER = struct.Struct("<BIIHq")  # format version, partition length, question length, vector dim, expiry (unix ms)
_VERSION = 2  # 2: the question compressed apart from the answer, so a mirror indexes an entry without inflating the answer


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
    """header | partition | zlib(question) | float32 vector | zlib(JSON answer); EntryTooLarge over `cap`."""
    vector = np.ascontiguousarray(entry.vector, dtype=np.float32)
    payload = zlib.compress(canonical_json(entry.body).encode(), 6)
    part, text = entry.partition.encode(), zlib.compress(entry.text.encode("utf-8", "surrogateescape"), 1)
    blob = _HEADER.pack(_VERSION, len(part), len(text), vector.shape[0], entry.expires_ms) + part + text + vector.tobytes() + payload
    if len(blob) > cap:
        raise EntryTooLarge(f"compressed entry is {len(blob)} bytes, cap {cap}")
    return blob


@dataclass(slots=True)
class PackedEntry:
    """An entry as a mirror indexes it: the answer stays compressed until a hit needs it."""

    partition: str
    text: str
    vector: np.ndarray
    body_zlib: bytes
    expires_ms: int


def unpack_entry_lazy(blob: bytes) -> PackedEntry:
    """Everything but the answer decoded (no inflate, no JSON); ValueError on another format."""
    version, plen, tlen, dim, expires_ms = _HEADER.unpack_from(blob)
    if version != _VERSION:
        raise ValueError(f"entry format {version}, expected {_VERSION}")
    at = _HEADER.size
    partition = blob[at:at + plen].decode()
    at += plen
    text = zlib.decompress(blob[at:at + tlen]).decode("utf-8", "surrogateescape")
    at += tlen
    vector = np.frombuffer(blob, dtype=np.float32, count=dim, offset=at).copy()
    return PackedEntry(partition, text, vector, blob[at + dim * 4:], expires_ms)


def unpack_entry(blob: bytes) -> SemanticEntry:
    packed = unpack_entry_lazy(blob)
    return SemanticEntry(packed.partition, packed.text, packed.vector, unpack_body(packed.body_zlib), packed.expires_ms)
