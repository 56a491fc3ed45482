"""`thrifty controller`: telemetry gRPC server, HTTP API, and the control loop."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the fleet's YAML config")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="telemetry listen address (default: config controller.listen_grpc)")
    parser.add_argument("--http", metavar="HOST:PORT", help="API listen address (default: config controller.listen_http)")
    parser.add_argument("--token-file", metavar="PATH", help="file holding the API bearer token (default: $THRIFTY_CONTROLLER_TOKEN)")
    parser.add_argument("--token", help=argparse.SUPPRESS)  # deprecated: visible in `ps`; use --token-file or the env
    parser.add_argument("--telemetry-token-file", metavar="PATH",
                        help="shared token the sidecars prove on the telemetry stream (default: $THRIFTY_TELEMETRY_TOKEN)")
    parser.add_argument("--insecure-telemetry", action="store_true",
                        help="development only: accept telemetry from any process that reaches the gRPC port")
    kube = parser.add_mutually_exclusive_group()
    kube.add_argument("--kubeconfig", help="act on the cluster in this kubeconfig")
    kube.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    kube.add_argument("--no-kube", action="store_true", help="decide but do not act (no Kubernetes)")
    parser.add_argument("--namespace", help="namespace of the tiers' Deployments (default: config)")
    parser.add_argument("--dry-run", action="store_true", help="send scale requests with dryRun=All; change nothing")
    parser.add_argument("--lease", default="thrifty-controller", help="leader-election Lease name")
    parser.add_argument("--interval", type=float, help="seconds between control rounds (default: config)")


def _split(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"thrifty controller: address must be host:port, got {addr!r}")
    return host or "127.0.0.1", int(port)


def _api_token(args: argparse.Namespace) -> str:
    """The API token from --token-file, else $THRIFTY_CONTROLLER_TOKEN (else the deprecated --token)."""
    from thrifty.wire.auth import AuthConfigError

    if args.token_file:
        try:
            with open(args.token_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise AuthConfigError(f"--token-file {args.token_file}: cannot read: {exc.strerror}") from None
    return os.environ.get("THRIFTY_CONTROLLER_TOKEN", "") or args.token or ""


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal
    import sys

    from thrifty.config import load_config

    from thrifty.wire.auth import TOKEN_ENV, AuthConfigError, TlsFiles, load_token, server_credentials

    config = load_config(args.config)
    try:
        token = _api_token(args)
        telemetry_token = load_token(args.telemetry_token_file)
        tls_cfg = config.controller.tls
        tls = TlsFiles(ca=tls_cfg.ca, cert=tls_cfg.cert, key=tls_cfg.key)
        if tls.enabled:
            server_credentials(tls)  # unreadable files: one line now, not a traceback later
    except AuthConfigError as exc:
        print(f"thrifty controller: {exc}", file=sys.stderr)
        return 2
    if not token:
        print("thrifty controller: set --token-file or THRIFTY_CONTROLLER_TOKEN for the API", file=sys.stderr)
        return 2
    if telemetry_token is None and not args.insecure_telemetry:
        print(f"thrifty controller: set ${TOKEN_ENV} or --telemetry-token-file (the shared telemetry token; "
              "--insecure-telemetry for development only)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    http_host, http_port = _split(args.http or config.controller.listen_http)
    grpc_addr = args.grpc or config.controller.listen_grpc
    _split(grpc_addr)
    interval = args.interval or config.controller.interval_s

    async def main() -> int:
        from aiohttp import web

        from thrifty.controller.grpc_server import start_grpc
        from thrifty.controller.http_api import build_app
        from thrifty.controller.k8s import KubeActuator, LeaseElector, load_api_client
        from thrifty.controller.service import ControlPlane

        actuator = None
        if not args.no_kube:
            from kubernetes import client

            api = await asyncio.to_thread(load_api_client, args.kubeconfig, args.in_cluster)
            ns = args.namespace or config.controller.namespace
            elector = LeaseElector(client.CoordinationV1Api(api), ns, name=args.lease,
                                   identity=os.environ.get("POD_NAME") or None)
            deployments = {t.name: t.replicas.deployment or t.name for t in config.tiers}
            actuator = KubeActuator(api, ns, deployments, dry_run=args.dry_run or config.controller.dry_run,
                                    elector=elector)
        plane = ControlPlane(config, actuator=actuator)
        server, port = await start_grpc(plane, grpc_addr, token=telemetry_token, tls=tls)
        if telemetry_token is None:
            logging.warning("controller: telemetry is unauthenticated (--insecure-telemetry): any process that "
                            "reaches %s can report telemetry", grpc_addr)
        runner = web.AppRunner(build_app(plane, token))
        await runner.setup()
        site = web.TCPSite(runner, http_host, http_port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else http_port
        logging.info("controller: telemetry gRPC on port %d, API on http://%s:%d", port, http_host, bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await plane.run(interval, stop)
        finally:
            if actuator is not None and actuator.elector is not None:
                await asyncio.to_thread(actuator.elector.release)
            await server.stop(grace=2)
            await runner.cleanup()
        return 0

    try:
        return asyncio.run(main())
    except OSError as exc:
        print(f"thrifty controller: {exc}", file=sys.stderr)
        return 1
