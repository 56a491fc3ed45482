"""The simulator's KV-cache events, in vLLM's wire format (`[topic, seq, payload]` frames).

A `SimReplica` with `kv_events = SimKvEventPublisher()` reports each prefix block it
caches or evicts; `flush(ts)` packs what happened since the last flush into one batch,
encoded exactly as vLLM's `ZmqEventPublisher` does (msgpack `[ts, [events]]`, events as
tagged maps), so the sidecar's own decoder and index read it. The simulator has no
token ids: each block hash stands for its block's content, so it is published as the
block's only token (`block_size` 1) and requests are matched on their block hashes.
Benches feed the frames in-process; `ZmqSink` sends them over ZeroMQ like an engine.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.msgpack.Encoder()


class SimKvEventPublisher:
    """Collects BlockStored/BlockRemoved from a simulated cache; `flush` emits vLLM frames."""

    def __init__(self, topic: str = "kv") -> None:
        self.topic = topic.encode()
        self.seq = 0
        self._events: list[dict[str, Any]] = []

    def stored(self, block_hash: int, parent: int | None) -> None:
        self._events.append({"type": "BlockStored", "block_hashes": [block_hash], "parent_block_hash": parent,
                             "token_ids": [block_hash], "block_size": 1, "lora_id": None, "medium": "GPU",
                             "lora_name": None})

    def removed(self, block_hash: int) -> None:
        self._events.append({"type": "BlockRemoved", "block_hashes": [block_hash], "medium": "GPU"})

    def cleared(self) -> None:
        self._events.append({"type": "AllBlocksCleared"})

    def flush(self, ts: float) -> list[tuple[bytes, bytes, bytes]]:
        """The frames of one batch holding every event since the last flush (none when idle)."""
        if not self._events:
            return []
        payload = _encoder.encode([ts, self._events, 0])  # data_parallel_rank 0, as vLLM fills it in
        self._events = []
        frame = (self.topic, self.seq.to_bytes(8, "big"), payload)
        self.seq += 1
        return [frame]

    def restart(self) -> None:
        """An engine restart: its cache is empty and its sequence counts from 0 again."""
        self._events = []
        self.seq = 0


class ZmqSink:
    """Publishes frames on a ZeroMQ PUB socket (bound, as vLLM binds `ipc://` and `tcp://*:PORT`)."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(endpoint)

    def send(self, frames: list[tuple[bytes, bytes, bytes]]) -> None:
        for frame in frames:
            self._pub.send_multipart(frame)

    def close(self) -> None:
        self._pub.close(linger=0)
        self._ctx.term()
