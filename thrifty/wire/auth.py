"""Mutual authentication of the telemetry stream: a shared token, proven both ways.

Handshake (one round trip, inside the stream):

1. the sidecar opens the call with metadata `x-thrifty-nonce: Ns` (random);
2. the controller answers with initial metadata `x-thrifty-nonce: Nc` and
   `x-thrifty-proof: HMAC(token, "controller|Ns|Nc")`; the sidecar checks it before it
   obeys anything, so a process squatting on the port while the controller is away
   is never obeyed;
3. the sidecar's Hello carries `proof = HMAC(token, "sidecar|Nc|Ns|sidecar_id")`; the
   controller checks it (constant time) before it registers the sidecar.

Why a challenge rather than a bearer token: the token never crosses the wire, so a
port squatter learns nothing it could replay to the real controller, and on a
plain-text channel a recorded proof is useless for another stream. TLS (optionally
mutual) is layered underneath when certificate files are configured; it protects the
stream's contents, which the proofs alone do not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

NONCE_KEY = "x-thrifty-nonce"
PROOF_KEY = "x-thrifty-proof"
TOKEN_ENV = "THRIFTY_TELEMETRY_TOKEN"
MIN_TOKEN_BYTES = 16  # shorter shared secrets are refused: they can be guessed offline from one proof
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")


class AuthConfigError(ValueError):
    """A token or certificate that cannot be used; `str()` is one line naming the source."""


def load_token(token_file: str | None = None, *, env: dict[str, str] | None = None) -> bytes | None:
    """The shared token from `token_file` (when given) or `$THRIFTY_TELEMETRY_TOKEN`; None when neither is set.

    Surrounding whitespace is ignored (Secrets mounted as files often end in a newline)."""
    env = os.environ if env is None else env
    if token_file:
        try:
            raw = Path(token_file).read_text()
        except OSError as exc:
            raise AuthConfigError(f"telemetry token file {token_file}: cannot read: {exc.strerror}") from None
        source = f"telemetry token file {token_file}"
    else:
        raw = env.get(TOKEN_ENV, "")
        source = f"${TOKEN_ENV}"
        if not raw:
            return None
    token = raw.strip().encode()
    if len(token) < MIN_TOKEN_BYTES:
        raise AuthConfigError(f"{source}: the token must be at least {MIN_TOKEN_BYTES} characters")
    return token


def new_nonce() -> str:
    return secrets.token_hex(16)


def valid_nonce(value: str | None) -> bool:
    return value is not None and _NONCE_RE.match(value) is not None


def controller_proof(token: bytes, sidecar_nonce: str, controller_nonce: str) -> str:
    return hmac.new(token, f"controller|{sidecar_nonce}|{controller_nonce}".encode(), hashlib.sha256).hexdigest()


def sidecar_proof(token: bytes, controller_nonce: str, sidecar_nonce: str, sidecar_id: str) -> bytes:
    msg = f"sidecar|{controller_nonce}|{sidecar_nonce}|{sidecar_id}".encode("utf-8", "surrogateescape")
    return hmac.new(token, msg, hashlib.sha256).digest()


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality (`hmac.compare_digest`) of two proofs."""
    a = a.encode() if isinstance(a, str) else a
    b = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a, b)


def metadata_value(metadata: object, key: str) -> str | None:
    """The first value of `key` in gRPC metadata (a sequence of (key, value) pairs)."""
    for k, v in metadata or ():  # type: ignore[union-attr]
        if k == key:
            return v if isinstance(v, str) else bytes(v).decode("latin-1")
    return None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for one side of the stream. Server: cert+key (+ca: require client certs).
    Client: ca (verify the controller), cert+key (present a client certificate)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # client side: the name the controller's certificate carries

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert or self.key)


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"telemetry TLS {what} {path}: cannot read: {exc.strerror}") from None


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """TLS for the controller's port; with `ca`, clients must present a certificate it signed (mTLS)."""
    cert, key = _read(tls.cert, "cert"), _read(tls.key, "key")
    if cert is None or key is None:
        raise AuthConfigError("telemetry TLS on the controller needs both cert and key")
    ca = _read(tls.ca, "ca")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """TLS for the sidecar's channel; `ca` verifies the controller, cert+key answer mTLS."""
    if bool(tls.cert) != bool(tls.key):
        raise AuthConfigError("telemetry TLS client certificate needs both cert and key")
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca, "ca"),
                                        private_key=_read(tls.key, "key"), certificate_chain=_read(tls.cert, "cert"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: object, limit: int = 80) -> str:
    """`value` safe for one log line: control characters escaped, cut to `limit` characters."""
    text = str(value)
    cut = len(text) > limit
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit])
    return text + ("..." if cut else "")
