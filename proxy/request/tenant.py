"""Who a request belongs to, so every cache can be partitioned by tenant.

The API key itself is never kept: the tenant is a short hash of it, memoised so the
hash is computed once per distinct key rather than once per request.

Trust rules (config `cache.tenancy`, docs/operators.md): `X-Thrifty-Tenant` is honoured
only when the operator enables it and the request comes from one of the configured
proxy networks (otherwise any client could name another's tenant and read its cached
answers); a request with no key gets `ANONYMOUS` (no caching) unless the operator
chose one tenant per client address or one shared tenant.
"""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache
from typing import Any

from thrifty.config import TenancySettings

TENANT_HEADER = "X-Thrifty-Tenant"
ANONYMOUS = "anonymous"  # no tenant: the caches neither read nor write for it
SHARED_ANONYMOUS = "anonymous-shared"
_MAX_HEADER_TENANT = 128
_DEFAULT = TenancySettings()


@lru_cache(maxsize=4096)
def _hash_key(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@lru_cache(maxsize=4096)
def _hash_addr(addr: str) -> str:
    return "addr-" + hashlib.sha256(addr.encode()).hexdigest()[:16]


def _from_trusted_proxy(peer: str | None, settings: TenancySettings) -> bool:
    if not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in settings.trusted_proxies)


def tenant_of(authorization: str | None, tenant_header: str | None, peer: str | None = None,
              settings: TenancySettings = _DEFAULT) -> str:
    """The tenant: the trusted header, else a hash of the bearer key, else per the anonymous rule."""
    if tenant_header and settings.trust_tenant_header and _from_trusted_proxy(peer, settings):
        value = tenant_header.strip()[:_MAX_HEADER_TENANT]
        if value:
            return "hdr-" + value
    if authorization:
        scheme, _, key = authorization.partition(" ")
        key = key.strip() if scheme.lower() == "bearer" else authorization.strip()
        if key:
            return _hash_key(key)
    if settings.anonymous == "shared":
        return SHARED_ANONYMOUS
    if settings.anonymous == "per_client" and peer:
        return _hash_addr(peer)
    return ANONYMOUS


def client_address(request: Any) -> str | None:
    """The client's IP address from a front-door request (None when unknown).

    Reads `request.peer` when the front door provides it, else the connection's
    transport peer name (raw front door) or aiohttp's `remote` (handed-off requests)."""
    peer = getattr(request, "peer", None)
    if peer:
        return str(peer)
    conn = getattr(request, "conn", None)
    transport = getattr(conn, "transport", None)
    if transport is not None:
        name = transport.get_extra_info("peername")
        if isinstance(name, (tuple, list)) and name:
            return str(name[0])
    inner = getattr(conn, "request", None)
    remote = getattr(inner, "remote", None)
    return str(remote) if remote else None
