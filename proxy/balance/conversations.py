"""Where each Responses API conversation lives: response id -> (tier, replica URL).

vLLM keeps a response (for `previous_response_id` and `GET /v1/responses/{id}`) in the
memory of the replica that produced it, so a follow-up must reach that replica, not the
tier the router would pick. Bounded (oldest forgotten first): a forgotten or unknown id
goes wherever it would have gone, and the engine answers for it.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_CONVERSATIONS = 100_000


class ConversationHomes:
    def __init__(self, max_entries: int = DEFAULT_MAX_CONVERSATIONS) -> None:
        self.max_entries = max_entries
        self._homes: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._homes)

    def remember(self, response_id: str, tier: str, replica_url: str) -> None:
        self._homes[response_id] = (tier, replica_url)
        self._homes.move_to_end(response_id)
        while len(self._homes) > self.max_entries:
            self._homes.popitem(last=False)

    def home(self, response_id: str) -> tuple[str, str] | None:
        return self._homes.get(response_id)
