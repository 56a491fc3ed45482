"""Assemble and run one sidecar process: levers, telemetry, server, until a signal."""

from __future__ import annotations

import argparse
import asyncio
import signal

from prometheus_client import CollectorRegistry

from thrifty.config import Config, ConfigError
from thrifty.proxy.observe.accounting import DEFAULT_NOMINAL_TOKENS_PER_S
from thrifty.proxy.levers.protocol import Levers, NoLevers
from thrifty.proxy.observe.logs import AccessLog, setup_logging
from thrifty.proxy.app import Sidecar, bound_port, serve
from thrifty.wire.auth import TOKEN_ENV, AuthConfigError, TlsFiles, channel_credentials, load_token

def default_sidecar_id(port: int) -> str:
    """Unique per pod: `$POD_NAME` (the manifests set it from the downward API), else hostname:port."""
    import os
    import socket

    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{port}"


def telemetry_credentials(config: Config, args: argparse.Namespace) -> tuple[bytes | None, TlsFiles | None]:
    """The telemetry token (file or $THRIFTY_TELEMETRY_TOKEN) and TLS files; no token is a
    config error unless --insecure-telemetry says so (docs/operators.md, security)."""
    try:
        token = load_token(getattr(args, "telemetry_token_file", None))
    except AuthConfigError as exc:
        raise ConfigError(str(exc)) from None
    if token is None and not getattr(args, "insecure_telemetry", False):
        raise ConfigError(f"telemetry to the controller needs a token: set ${TOKEN_ENV} or --telemetry-token-file "
                          "(--insecure-telemetry for development only)")
    t = config.controller.tls
    tls = TlsFiles(ca=t.ca, cert=t.cert, key=t.key, server_name=t.server_name)
    if tls.enabled:
        try:
            channel_credentials(tls)  # unreadable files: fail now, not in the background task
        except AuthConfigError as exc:
            raise ConfigError(str(exc)) from None
    return token, tls


def levers_wanted(config: Config) -> bool:
    return config.cache.exact.enabled or config.cache.semantic.enabled or config.router.enabled


async def build_levers(config: Config, registry: CollectorRegistry) -> Levers:
    """The caches and router when the config enables any of them (built off the event loop: models load)."""
    if not levers_wanted(config):
        return NoLevers()
    from thrifty.proxy.levers.cost_levers import CostLevers

    try:
        return await asyncio.to_thread(CostLevers, config, registry)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # a missing or stale router/verifier artifact
        raise ConfigError(f"cost levers: {exc} (retrain the artifact, see `thrifty router --help`, "
                          "or disable router/semantic cache in the config)") from None


async def run_sidecar(config: Config, args: argparse.Namespace, replicas: dict[str, list[str]]) -> int:
    log = setup_logging(args.log_level)
    log.info("starting", extra={"fields": {"config": str(args.config)}})
    unknown = set(replicas) - {t.name for t in config.tiers}
    if unknown:
        raise ConfigError(f"--replica names unknown tiers: {sorted(unknown)}")
    controller = args.controller or config.controller.url
    token, tls = telemetry_credentials(config, args) if controller else (None, None)
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    sidecar = Sidecar(
        config,
        replicas=replicas or None,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        access_log=AccessLog(enabled=not args.no_access_log),
        nominal_tokens_per_s=args.nominal_tokens_per_s or DEFAULT_NOMINAL_TOKENS_PER_S,
    )
    sidecar.set_levers(await build_levers(config, sidecar.metrics.registry))
    runner = await serve(sidecar, host, port)
    port = bound_port(runner)
    log.info("listening", extra={"fields": {"host": host, "port": port}})
    telemetry = None
    if controller:
        from thrifty.proxy.observe.telemetry import TelemetryClient

        telemetry = TelemetryClient(controller, sidecar.metrics.registry, args.sidecar_id or default_sidecar_id(port),
                                    sidecar.apply_policy, token=token, tls=tls, verdicts=sidecar.quality)
        await telemetry.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if telemetry is not None:
            await telemetry.stop()
        await runner.cleanup(grace_s=config.listen.drain_s)
    return 0
