"""`thrifty up`: the embedded default — engines, sidecar and controller on localhost.

Engines are supervised in this process; the sidecar and the controller run as child
processes with a generated runtime config that points the sidecar at the engines'
URLs. Ctrl-C (or SIGTERM) stops the sidecar first, then the controller, then drains
the engines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "local-cpu.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="thrifty YAML config (default: the embedded CPU demo)")
    parser.add_argument(
        "--engine",
        choices=["vllm", "sim"],
        default="vllm",
        help="vllm: the config's engines (the demo's small tier is real vLLM on CPU); sim: every engine simulated",
    )
    parser.add_argument("--port", type=int, default=None, help="sidecar port clients call (default: the config's listen.port)")
    parser.add_argument("--no-controller", action="store_true", help="run without the controller")
    parser.add_argument("--log-dir", default=None, help="where engine, sidecar and controller logs go (default: a temp dir)")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for engines (default 600)")


def runtime_config(raw: dict, urls: dict[str, list[str]], port: int | None, controller: str | None) -> dict:
    """The sidecar's config: every local tier becomes `external` with its engines' URLs."""
    out = dict(raw)
    tiers = []
    for tier in raw["tiers"]:
        tier = dict(tier)
        if tier["name"] in urls:
            engine = dict(tier.get("engine") or {})
            engine["kind"] = "external"
            tier["engine"] = engine
            replicas = dict(tier.get("replicas") or {})
            replicas["urls"] = urls[tier["name"]]
            tier["replicas"] = replicas
        tiers.append(tier)
    out["tiers"] = tiers
    if port is not None:
        out["listen"] = {**(raw.get("listen") or {}), "port": port}
    if controller:
        out["controller"] = {**(raw.get("controller") or {}), "url": controller}
    return out


def simulated(raw: dict) -> dict:
    """The same fleet with every local vLLM engine replaced by the simulator (same profile)."""
    out = dict(raw)
    out["tiers"] = []
    for tier in raw["tiers"]:
        tier = dict(tier)
        engine = dict(tier.get("engine") or {})
        if engine.get("kind", "vllm") == "vllm":
            engine["kind"] = "sim"
        tier["engine"] = engine
        out["tiers"].append(tier)
    return out


async def _start_child(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


async def _wait_http(url: str, timeout_s: float, proc: asyncio.subprocess.Process) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: process exited with {proc.returncode} (see its log)")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


async def _stop_child(proc: asyncio.subprocess.Process, timeout_s: float = 20) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _up(args: argparse.Namespace) -> int:
    from thrifty.config import load_config, parse_config
    from thrifty.engine.supervisor import Supervisor, engine_specs

    load_config(args.config)  # one-line errors for a bad file before anything starts
    raw = yaml.safe_load(Path(args.config).read_text())
    if args.engine == "sim":
        raw = simulated(raw)
    config = parse_config(raw, args.config)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="thrifty-up-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"thrifty up: logs in {log_dir}", flush=True)

    specs = [s for tier in config.tiers for s in engine_specs(config, tier)]
    supervisor = Supervisor(specs, log_dir=log_dir, start_timeout_s=args.start_timeout)
    children: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for s in specs:
            print(f"starting engine {s.tier}[{s.index}] ({config.tier(s.tier).engine.kind}) on {s.url} ...", flush=True)
        await supervisor.start()
        urls = {t.name: supervisor.urls(t.name) for t in config.tiers if supervisor.urls(t.name)}

        controller_target = None
        token = os.environ.get("THRIFTY_CONTROLLER_TOKEN") or secrets.token_urlsafe(16)
        os.environ.setdefault("THRIFTY_TELEMETRY_TOKEN", secrets.token_urlsafe(32))  # inherited by both children
        if not args.no_controller:
            grpc_addr, http_addr = config.controller.listen_grpc, config.controller.listen_http
            cfg_path = log_dir / "controller.yaml"
            cfg_path.write_text(yaml.safe_dump(raw))
            ctl = await _start_child(
                [sys.executable, "-m", "thrifty.cli", "controller", "--config", str(cfg_path), "--grpc", grpc_addr,
                 "--http", http_addr, "--token", token, "--no-kube"],
                log_dir / "controller.log",
            )
            children.append(ctl)
            await _wait_http(f"http://{http_addr}/healthz", 60, ctl)
            controller_target = grpc_addr
            print(f"controller: http://{http_addr} (TUI: thrifty tui --controller http://{http_addr} --token {token})", flush=True)

        sidecar_cfg = runtime_config(raw, urls, args.port, controller_target)
        cfg_path = log_dir / "sidecar.yaml"
        cfg_path.write_text(yaml.safe_dump(sidecar_cfg))
        listen = parse_config(sidecar_cfg, str(cfg_path)).listen
        proxy = await _start_child([sys.executable, "-m", "thrifty.cli", "proxy", "--config", str(cfg_path)], log_dir / "sidecar.log")
        children.append(proxy)
        base = f"http://{listen.host}:{listen.port}"
        await _wait_http(base + "/healthz", 60, proxy)
        names = ", ".join(n for t in config.tiers for n in t.served_names)
        print(f"\nthrifty is up. Point an OpenAI client at {base}/v1 (models: {names})", flush=True)
        print(f"metrics: {base}/metrics   stop: Ctrl-C", flush=True)
        await stop.wait()
    finally:
        print("stopping...", flush=True)
        for child in reversed(children):
            await _stop_child(child)
        await supervisor.stop()
        print("stopped.", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_up(args))
    except RuntimeError as exc:  # a part did not start: say which, the logs say why
        print(f"thrifty up: {exc}", file=sys.stderr)
        return 1
