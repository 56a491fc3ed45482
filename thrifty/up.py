"""`thrifty up`: the embedded default — engines, sidecar and controller on localhost.

Engines are supervised in this process; the sidecar and the controller run as child
processes with a generated runtime config that points the sidecar at the engines'
URLs. Ctrl-C (or SIGTERM) stops the sidecar first, then the controller, then drains
the engines. Every port is checked free before anything starts (so no health check is
answered by another instance), secrets reach the children through their environment
only (never argv, never the console), and each start-up step reports its elapsed time
against the usual one, at least every few seconds. `--shared-cache` adds a local
redis-server (data in the log dir) and a second sidecar, both with `cache.shared` on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "local-cpu.yaml"
# `--engine sim` with the default config: the GPU fleet the CPU demo stands for, so the
# simulated small tier answers at a GPU's speed rather than at this machine's CPU speed.
DEFAULT_SIM_CONFIG = CONFIGS / "local-sim.yaml"
GRAFANA_RULES = Path(__file__).resolve().parents[1] / "grafana" / "rules" / "thrifty-rules.yaml"
HEARTBEAT_S = 5.0
# Port layout under --port-base B: the sidecar on B, the controller's HTTP and gRPC API on
# B+90 and B+91, Prometheus (--observe) on B+92, tier k's engines from B+100*(k+1).
CONTROLLER_HTTP_OFFSET, CONTROLLER_GRPC_OFFSET, PROMETHEUS_OFFSET, TIER_OFFSET = 90, 91, 92, 100
DEFAULT_PROMETHEUS_PORT = 9090
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="thrifty YAML config (default: the embedded CPU demo)")
    parser.add_argument(
        "--engine",
        choices=["vllm", "sim"],
        default="vllm",
        help="vllm: the config's engines (the demo's small tier is real vLLM on CPU); sim: every engine simulated "
        "(with the default config: the GPU fleet the demo imitates, configs/local-sim.yaml)",
    )
    parser.add_argument("--port", type=int, default=None, help="sidecar port clients call (default: the config's listen.port)")
    parser.add_argument(
        "--port-base", type=int, default=None, metavar="B",
        help="move every port of the stack: sidecar B, controller HTTP B+90 and gRPC B+91, Prometheus B+92, "
        "tier k's engines from B+100*(k+1) (default: the config's ports)",
    )
    parser.add_argument(
        "--observe", action="store_true",
        help="also start Prometheus (Debian package `prometheus`) scraping the stack with grafana/rules loaded; prints its URL",
    )
    parser.add_argument(
        "--shared-cache", action="store_true",
        help="also start a local redis-server (Debian package `redis-server`) on a free loopback port, data in the log "
        "dir, and a second sidecar on the sidecar port + 1; both share their caches through it (cache.shared)",
    )
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


def apply_port_base(raw: dict, base: int) -> dict:
    """`raw` with every port moved to the --port-base layout (see PROMETHEUS_OFFSET)."""
    if not 1 <= base or base + TIER_OFFSET * (len(raw.get("tiers") or []) + 1) > 65535:
        raise ValueError(f"--port-base {base}: the stack needs ports {base}..{base + TIER_OFFSET * (len(raw.get('tiers') or []) + 1)}, within 1..65535")
    out = dict(raw)
    host = (raw.get("listen") or {}).get("host", "127.0.0.1")
    out["listen"] = {**(raw.get("listen") or {}), "port": base}
    out["controller"] = {**(raw.get("controller") or {}), "listen_http": f"{host}:{base + CONTROLLER_HTTP_OFFSET}",
                         "listen_grpc": f"{host}:{base + CONTROLLER_GRPC_OFFSET}"}
    out["tiers"] = []
    for k, tier in enumerate(raw["tiers"]):
        tier = dict(tier)
        tier["engine"] = {**(tier.get("engine") or {}), "base_port": base + TIER_OFFSET * (k + 1)}
        out["tiers"].append(tier)
    return out


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def busy_ports(wanted: list[tuple[str, str, int]]) -> list[str]:
    """Which of (role, host, port) cannot be bound now, as 'host:port (role)'."""
    busy = []
    for role, host, port in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is not busy
            try:
                s.bind((host, port))
            except OSError:
                busy.append(f"{host}:{port} ({role})")
    return busy


def thrifty_command() -> str:
    """How to call `thrifty` from the current directory, as it can be copied and run."""
    exe = Path(sys.executable).with_name("thrifty")
    if not exe.exists():
        return f"{sys.executable} -m thrifty.cli"
    with contextlib.suppress(ValueError):
        rel = exe.relative_to(Path.cwd())
        return str(rel) if str(rel).startswith(".") else f"./{rel}"
    return str(exe)


def write_secret(path: Path, value: str) -> Path:
    """Write `value` to `path` readable by this user only (mode 0600 from creation on)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


def prometheus_config(sidecar: str, controller_http: str | None, engines: dict[str, list[str]], interval_s: float = 5) -> dict:
    """Scrape config for the local stack, with the project's recording and alerting rules."""
    label = {"namespace": "local"}
    jobs = [{"job_name": "thrifty-sidecar", "static_configs": [{"targets": [sidecar], "labels": label}]}]
    if controller_http:
        jobs.append({"job_name": "thrifty-controller", "static_configs": [{"targets": [controller_http], "labels": label}]})
    jobs.append({"job_name": "vllm", "static_configs": [
        {"targets": [u.split("://", 1)[-1] for u in urls], "labels": {**label, "tier": tier}} for tier, urls in engines.items() if urls]})
    return {"global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
            "rule_files": [str(GRAFANA_RULES)], "scrape_configs": jobs}


def _fmt_s(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60} min {s % 60} s" if s >= 90 else f"{s} s"


async def step(label: str, usual_s: float, work: Awaitable[T], status: Callable[[], str] | None = None) -> T:
    """Run `work`, saying what runs, then every HEARTBEAT_S how long against the usual time."""
    print(f"{label} (usually ~{_fmt_s(usual_s)}) ...", flush=True)
    started = time.monotonic()
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_S)
        elapsed = time.monotonic() - started
        if done:
            result = task.result()
            print(f"  done in {_fmt_s(elapsed)}", flush=True)
            return result
        extra = f": {status()}" if status else ""
        print(f"  … {_fmt_s(elapsed)} elapsed (usually ~{_fmt_s(usual_s)}){extra}", flush=True)


async def _start_child(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env
        )
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


def _engine_status(supervisor: object) -> str:
    engines = getattr(supervisor, "engines", [])
    return ", ".join(f"{e.spec.tier}[{e.spec.index}] {'ready' if e.healthy else 'starting'}" for e in engines)


def _usual_engine_start_s(config: object) -> float:
    """vLLM CPU with --enforce-eager: 40-75 s on 2 cores (quiet to shared); a GPU vLLM ~90 s; the simulator ~5 s."""
    usual = 5.0
    for tier in config.tiers:  # type: ignore[attr-defined]
        if tier.engine.kind == "vllm":
            usual = max(usual, 60.0 if tier.engine.device == "cpu" else 90.0)
    return usual


async def _up(args: argparse.Namespace) -> int:
    from thrifty.config import load_config, parse_config
    from thrifty.engine.supervisor import Supervisor, engine_specs

    config_path = args.config or str(DEFAULT_SIM_CONFIG if args.engine == "sim" else DEFAULT_CONFIG)
    load_config(config_path)  # one-line errors for a bad file before anything starts
    raw = yaml.safe_load(Path(config_path).read_text())
    if args.engine == "sim":
        raw = simulated(raw)
    if args.port_base is not None:
        try:
            raw = apply_port_base(raw, args.port_base)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
    if args.port is not None:
        raw["listen"] = {**(raw.get("listen") or {}), "port": args.port}
    config = parse_config(raw, config_path)
    prometheus = shutil.which("prometheus") if args.observe else None
    if args.observe and prometheus is None:
        raise RuntimeError("--observe needs Prometheus: apt-get install prometheus (Debian package)")
    redis_binary = None
    if args.shared_cache:
        from thrifty.proxy.levers.shared.local_server import redis_server_binary

        if (redis_binary := redis_server_binary()) is None:
            raise RuntimeError("--shared-cache needs Redis: apt-get install redis-server (Debian package)")
    prom_port = (args.port_base + PROMETHEUS_OFFSET) if args.port_base is not None else DEFAULT_PROMETHEUS_PORT
    listen = config.listen

    wanted = [("sidecar", listen.host, listen.port)]
    if args.shared_cache:
        wanted.append(("second sidecar (--shared-cache)", listen.host, listen.port + 1))
    if not args.no_controller:
        for role, addr in (("controller HTTP", config.controller.listen_http), ("controller gRPC", config.controller.listen_grpc)):
            wanted.append((role, *_split_addr(addr)))
    for tier in config.tiers:
        if tier.engine.kind != "external":
            wanted += [(f"engine {tier.name}[{i}]", "127.0.0.1", tier.engine.base_port + i) for i in range(tier.replicas.count)]
    if args.observe:
        wanted.append(("prometheus", "127.0.0.1", prom_port))
    if busy := busy_ports(wanted):
        raise RuntimeError(f"port(s) in use: {', '.join(busy)}; stop what holds them (another `thrifty up`?) "
                           "or move every port of the stack with --port-base, e.g. --port-base 18000")

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="thrifty-up-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"thrifty up: config {config_path}{' (every engine simulated)' if args.engine == 'sim' else ''}; logs in {log_dir}", flush=True)

    print("preparing engines (a first run installs vLLM's CPU build, ~5 min; it reports its own steps) ...", flush=True)
    specs = [s for tier in config.tiers for s in engine_specs(config, tier)]
    supervisor = Supervisor(specs, log_dir=log_dir, start_timeout_s=args.start_timeout)
    children: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Secrets go to the children through their environment only: never argv (readable by
    # every user in `ps`, and a value starting with '-' parses as a flag), never the console.
    token = os.environ.get("THRIFTY_CONTROLLER_TOKEN") or secrets.token_urlsafe(16)
    telemetry_token = os.environ.get("THRIFTY_TELEMETRY_TOKEN") or secrets.token_urlsafe(16)
    child_env = {**os.environ, "THRIFTY_CONTROLLER_TOKEN": token, "THRIFTY_TELEMETRY_TOKEN": telemetry_token}
    sidecar_env = {k: v for k, v in child_env.items() if k != "THRIFTY_CONTROLLER_TOKEN"}
    redis = None
    try:
        names = ", ".join(f"{s.tier}[{s.index}] ({config.tier(s.tier).engine.kind}) on {s.url}" for s in specs)
        await step(f"[1/4] starting engines: {names}", _usual_engine_start_s(config), supervisor.start(),
                   lambda: _engine_status(supervisor))
        urls = {t.name: supervisor.urls(t.name) for t in config.tiers if supervisor.urls(t.name)}

        controller_target = None
        http_addr = None
        if not args.no_controller:
            grpc_addr, http_addr = config.controller.listen_grpc, config.controller.listen_http
            cfg_path = log_dir / "controller.yaml"
            cfg_path.write_text(yaml.safe_dump(raw))
            ctl = await _start_child(
                [sys.executable, "-m", "thrifty.cli", "controller", "--config", str(cfg_path), "--grpc", grpc_addr,
                 "--http", http_addr, "--no-kube"],
                log_dir / "controller.log", child_env,
            )
            children.append(ctl)
            await step(f"[2/4] starting the controller on http://{http_addr}", 5, _wait_http(f"http://{http_addr}/healthz", 60, ctl))
            controller_target = grpc_addr
        else:
            print("[2/4] controller: off (--no-controller)", flush=True)

        sidecar_cfg = runtime_config(raw, urls, None, controller_target)
        batch = sidecar_cfg.get("batch") or {}
        if not batch.get("store"):  # the Batch API, with its jobs in the log directory
            sidecar_cfg["batch"] = {**batch, "store": str(log_dir / "batch.sqlite")}
        if redis_binary is not None:
            from thrifty.proxy.levers.shared.local_server import LocalRedis

            redis = LocalRedis(log_dir / "redis")
            await step(f"[3/4] starting redis-server on 127.0.0.1:{redis.port} (--shared-cache)", 1, asyncio.to_thread(redis.start))
            sidecar_cfg["cache"] = {**(sidecar_cfg.get("cache") or {}), "shared": {"url": redis.url}}
        async def start_sidecar(name: str, cfg: dict, what: str) -> str:
            """One `thrifty proxy` child on `cfg` (written to NAME.yaml, logging to NAME.log); its base URL."""
            cfg_path = log_dir / f"{name}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            proxy = await _start_child([sys.executable, "-m", "thrifty.cli", "proxy", "--config", str(cfg_path)],
                                       log_dir / f"{name}.log", sidecar_env)
            children.append(proxy)
            url = f"http://{listen.host}:{cfg['listen']['port']}"
            await step(f"[3/4] starting {what} on {url}", 8, _wait_http(url + "/healthz", 60, proxy))
            return url

        sidecar_cfg["listen"] = {**(sidecar_cfg.get("listen") or {}), "host": listen.host, "port": listen.port}
        base = await start_sidecar("sidecar", sidecar_cfg, "the sidecar")
        second = None
        if redis is not None:
            second = await start_sidecar("sidecar-2", {
                **sidecar_cfg, "listen": {**sidecar_cfg["listen"], "port": listen.port + 1},
                "batch": {**sidecar_cfg["batch"], "store": str(log_dir / "batch-2.sqlite")}}, "the second sidecar (shares the cache)")

        prom_url = None
        if prometheus is not None:
            prom_cfg = log_dir / "prometheus.yml"
            prom_cfg.write_text(yaml.safe_dump(prometheus_config(f"{listen.host}:{listen.port}", http_addr, urls)))
            prom = await _start_child(
                [prometheus, f"--config.file={prom_cfg}", f"--storage.tsdb.path={log_dir / 'prometheus-data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1d"],
                log_dir / "prometheus.log",
            )
            children.append(prom)
            prom_url = f"http://127.0.0.1:{prom_port}"
            await step(f"[4/4] starting Prometheus on {prom_url}", 4, _wait_http(prom_url + "/-/ready", 60, prom))
        else:
            print("[4/4] Prometheus: off (--observe starts one)", flush=True)

        served = ", ".join(n for t in config.tiers for n in t.served_names)
        print(f"\nthrifty is up. Point an OpenAI client at {base}/v1 (models: {served})", flush=True)
        print(f"metrics: {base}/metrics   stop: Ctrl-C", flush=True)
        if second and redis is not None:
            print(f"shared cache: {second}/v1 is a second sidecar; both cache through redis-server on 127.0.0.1:{redis.port} "
                  "(a question answered by one is a cache hit on the other: reply header X-Thrifty-Cache)", flush=True)
        if prom_url:
            print(f"prometheus: {prom_url} (rules: {GRAFANA_RULES.name}; try {prom_url}/graph?g0.expr=tier:thrifty_requests:rate5m)", flush=True)
        if http_addr:
            token_file = write_secret(log_dir / "controller.token", token)
            print(f"console: {thrifty_command()} tui --controller http://{http_addr} --token-file {token_file}", flush=True)
        await stop.wait()
    finally:
        print("stopping...", flush=True)
        for child in reversed(children):
            await _stop_child(child)
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        await supervisor.stop()
        print("stopped.", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_up(args))
    except RuntimeError as exc:  # a part did not start: say which, the logs say why
        print(f"thrifty up: {exc}", file=sys.stderr)
        return 1
