"""Who a request belongs to, so every cache can be partitioned by tenant.

The API key itself is never kept: the tenant is a short hash of it, memoised so the
hash is computed once per distinct key rather than once per request.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

TENANT_HEADER = "X-Thrifty-Tenant"
ANONYMOUS = "anonymous"
_MAX_HEADER_TENANT = 128


@lru_cache(maxsize=4096)
def _hash_key(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def tenant_of(authorization: str | None, tenant_header: str | None) -> str:
    """`X-Thrifty-Tenant` when set (trusted, set by a gateway), else a hash of the bearer key."""
    if tenant_header:
        return "hdr-" + tenant_header.strip()[:_MAX_HEADER_TENANT]
    if authorization:
        scheme, _, key = authorization.partition(" ")
        key = key.strip() if scheme.lower() == "bearer" else authorization.strip()
        if key:
            return _hash_key(key)
    return ANONYMOUS
