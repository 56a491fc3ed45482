"""What each replica's prefix cache holds, as its engine reports it (vLLM KV-cache events).

Blocks are keyed by their content, not by the engine's hash: key(i) = hash((key(i-1),
tokens of block i)), with key(-1) = 0. A request's token ids cut into the same block size
give the same chain of keys, so a prefix match is a walk from the first block and the
sidecar never needs vLLM's hash seed. Stored events arrive with the engine's
`parent_block_hash`; the index keeps engine hash -> key to continue the chain and to
apply `BlockRemoved`. Memory per replica is bounded: past `max_blocks` the oldest stored
blocks are dropped (a dropped block only costs a missed match, never a wrong one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

ROOT_KEY = 0
DEFAULT_MAX_BLOCKS = 1 << 18


def chain_keys(token_ids: Sequence[int], block_size: int, *, root: int = ROOT_KEY,
               max_blocks: int | None = None) -> list[int]:
    """The content keys of the full blocks of `token_ids` (a partial tail block has none, as in vLLM)."""
    n = len(token_ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    keys: list[int] = []
    key = root
    for i in range(n):
        key = hash((key, tuple(token_ids[i * block_size:(i + 1) * block_size])))
        keys.append(key)
    return keys


class ReplicaKvIndex:
    """One replica's held blocks: engine hash -> content key, and content key -> holders."""

    __slots__ = ("max_blocks", "block_size", "_key_of", "_holders", "orphans", "dropped")

    def __init__(self, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        self.max_blocks = max_blocks
        self.block_size: int | None = None  # learned from the first BlockStored
        self._key_of: OrderedDict[Hashable, int] = OrderedDict()  # engine hash -> key, oldest first
        self._holders: dict[int, int] = {}  # key -> engine hashes holding it (LoRA/salt variants differ)
        self.orphans = 0  # stored blocks whose parent was unknown (missed or dropped): not indexed
        self.dropped = 0  # blocks dropped to stay within max_blocks

    def __len__(self) -> int:
        return len(self._key_of)

    def stored(self, block_hashes: Sequence[Hashable], parent: Hashable | None, token_ids: Sequence[int],
               block_size: int, extra_keys: Sequence[object] | None = None, root: int = ROOT_KEY) -> None:
        """Apply a BlockStored event: `token_ids` holds `block_size` tokens per hash."""
        if block_size < 1:
            return
        if self.block_size != block_size:
            if self.block_size is not None:
                self.clear()  # an engine with another block size: nothing old still matches
            self.block_size = block_size
        if parent is None:
            key = root
        else:
            found = self._key_of.get(parent)
            if found is None:
                self.orphans += len(block_hashes)
                return
            key = found
        for i, h in enumerate(block_hashes):
            chunk = token_ids[i * block_size:(i + 1) * block_size]
            if len(chunk) < block_size:
                break
            extra = extra_keys[i] if extra_keys is not None and i < len(extra_keys) else None
            key = hash((key, tuple(chunk))) if extra is None else hash((key, tuple(chunk), repr(extra)))
            old = self._key_of.pop(h, None)
            if old is not None:
                self._unhold(old)
            self._key_of[h] = key
            self._holders[key] = self._holders.get(key, 0) + 1
        while len(self._key_of) > self.max_blocks:
            _, k = self._key_of.popitem(last=False)
            self._unhold(k)
            self.dropped += 1

    def removed(self, block_hashes: Sequence[Hashable]) -> None:
        for h in block_hashes:
            key = self._key_of.pop(h, None)
            if key is not None:
                self._unhold(key)

    def clear(self) -> None:
        self._key_of.clear()
        self._holders.clear()

    def match(self, keys: Sequence[int]) -> int:
        """How many leading blocks of `keys` the replica holds."""
        holders = self._holders
        n = 0
        for k in keys:
            if k not in holders:
                break
            n += 1
        return n

    def _unhold(self, key: int) -> None:
        left = self._holders.get(key, 0) - 1
        if left > 0:
            self._holders[key] = left
        else:
            self._holders.pop(key, None)
