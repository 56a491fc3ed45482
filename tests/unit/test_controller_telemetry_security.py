"""Issue 17, "Control plane": each finding replayed with a real gRPC client against the
real controller (`start_grpc` + `ControlPlane`) on loopback, and now refused."""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter

from thrifty.config import parse_config
from thrifty.controller.grpc_server import start_grpc
from thrifty.controller.service import ControlPlane
from thrifty.proxy.observe.telemetry import TelemetryClient
from thrifty.wire import auth
from thrifty.wire import telemetry_pb2 as pb
from thrifty.wire import telemetry_pb2_grpc as pb_grpc
from thrifty.wire.codec import policy_to_pb

CONFIG = {
    "tiers": [
        {"name": "small", "model": "s", "price": {"gpu_hour": 0.5}, "replicas": {"count": 1, "min": 1, "max": 3}},
        {"name": "large", "model": "l", "price": {"gpu_hour": 2.5}, "replicas": {"count": 1, "min": 1, "max": 6}},
    ],
    "router": {"threshold": 0.5},
}
TOKEN = b"the-shared-telemetry-token"


def rejected(plane: ControlPlane, reason: str) -> float:
    return plane.metrics.registry.get_sample_value("thrifty_controller_telemetry_rejected_total", {"reason": reason}) or 0


async def controller(token: bytes | None = TOKEN, tls: auth.TlsFiles | None = None, **kw):
    plane = ControlPlane(parse_config(CONFIG), **kw)
    server, port = await start_grpc(plane, "127.0.0.1:0", token=token, tls=tls)
    return plane, server, port


class RawSidecar:
    """A hand-driven gRPC client: sends exactly the messages a test gives it."""

    def __init__(self, port: int, channel: grpc.aio.Channel | None = None) -> None:
        self.channel = channel or grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.outbox: asyncio.Queue[pb.SidecarMessage | None] = asyncio.Queue()
        self.call = None

    async def _requests(self):
        while (m := await self.outbox.get()) is not None:
            yield m

    async def open(self, sidecar_id: str, token: bytes | None = TOKEN, *, nonce: str | None = None,
                   proof: bytes | None = None) -> pb.ControllerMessage:
        """Handshake (with `token`, or the given raw `nonce`/`proof`) and return the first reply."""
        stub = pb_grpc.TelemetryStub(self.channel)
        nonce = auth.new_nonce() if nonce is None else nonce
        self.call = stub.Stream(self._requests(), metadata=((auth.NONCE_KEY, nonce),) if nonce else ())
        md = await self.call.initial_metadata()
        theirs = auth.metadata_value(md, auth.NONCE_KEY) or ""
        if proof is None and token is not None:
            proof = auth.sidecar_proof(token, theirs, nonce, sidecar_id)
        self.outbox.put_nowait(pb.SidecarMessage(hello=pb.Hello(sidecar_id=sidecar_id, proof=proof or b"")))
        return await self.call.read()

    async def send(self, window: pb.StatsWindow) -> None:
        self.outbox.put_nowait(pb.SidecarMessage(window=window))

    async def next_ack(self) -> int:
        while True:
            msg = await asyncio.wait_for(self.call.read(), 5)
            if msg.WhichOneof("kind") == "ack":
                return msg.ack.seq

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()


def window(seq: int, end: float | None = None, tier: str = "large", **fields) -> pb.StatsWindow:
    end = time.time() if end is None else end
    return pb.StatsWindow(seq=seq, window_start=end - 5, window_end=end, tiers=[pb.TierStats(tier=tier, **fields)])


async def _wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- credentials ------------------------------------------------------------------------
async def test_no_credentials_no_stream_and_no_fake_load() -> None:
    """Finding: fake windows (queue 5,000) from anyone who reaches the port drove scaling."""
    plane, server, port = await controller()
    raw = RawSidecar(port)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw.open("attacker", token=None, nonce="")
            await raw.send(window(1, queue_depth=5000))
            await raw.next_ack()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert plane.fleet.queue_depth("large") == 0 and not plane.sidecars
        assert rejected(plane, "unauthenticated") == 1
    finally:
        await raw.close()
        await server.stop(None)


async def test_wrong_proof_is_refused() -> None:
    plane, server, port = await controller()
    raw = RawSidecar(port)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw.open("sidecar-x", token=b"a-guessed-token-that-is-long-enough")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not plane.sidecars
    finally:
        await raw.close()
        await server.stop(None)


async def test_sidecar_with_the_wrong_token_never_applies_policy() -> None:
    plane, server, port = await controller()
    policies: list[dict] = []
    client = TelemetryClient(f"127.0.0.1:{port}", CollectorRegistry(), "sidecar-w", policies.append, interval_s=0.05,
                             backoff_initial_s=0.05, token=b"not-the-controllers-token")
    try:
        await client.start()
        await asyncio.sleep(0.5)
        assert not policies and not client.connected and not plane.sidecars
    finally:
        await client.stop()
        await server.stop(None)


class Squatter(pb_grpc.TelemetryServicer):
    """A fake controller that bound the port: it pushes a harmful policy, token or not."""

    def __init__(self, token: bytes | None) -> None:
        self.token = token

    async def Stream(self, request_iterator, context):  # noqa: N802
        if self.token is not None:  # tries the protocol with a token of its own
            theirs = auth.metadata_value(context.invocation_metadata(), auth.NONCE_KEY) or ""
            mine = auth.new_nonce()
            await context.send_initial_metadata(((auth.NONCE_KEY, mine),
                                                 (auth.PROOF_KEY, auth.controller_proof(self.token, theirs, mine))))
        yield pb.ControllerMessage(policy=policy_to_pb({"version": 99, "cache_enabled": False, "router_threshold": 0.0}))
        await asyncio.sleep(5)


@pytest.mark.parametrize("squatter_token", [None, b"squatters-own-token-12345"])
async def test_port_squatter_is_not_obeyed(squatter_token) -> None:
    """Finding: a process that bound the port while the controller was down pushed
    cache_enabled=false, router_threshold=0 and was obeyed."""
    server = grpc.aio.server()
    pb_grpc.add_TelemetryServicer_to_server(Squatter(squatter_token), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    policies: list[dict] = []
    registry = CollectorRegistry()
    client = TelemetryClient(f"127.0.0.1:{port}", registry, "sidecar-s", policies.append, interval_s=0.05,
                             backoff_initial_s=0.05, token=TOKEN)
    try:
        await client.start()
        await asyncio.sleep(0.6)
        assert policies == [] and client.policy is None
        assert registry.get_sample_value("thrifty_controller_connected") == 0
    finally:
        await client.stop()
        await server.stop(None)


async def test_controller_connected_gauge_follows_the_stream() -> None:
    """docs/metrics.md documents thrifty_controller_connected on the sidecar; it is exported now."""
    plane, server, port = await controller()
    registry = CollectorRegistry()
    client = TelemetryClient(f"127.0.0.1:{port}", registry, "sidecar-g", lambda p: None, interval_s=0.05,
                             backoff_initial_s=0.05, token=TOKEN)
    try:
        assert registry.get_sample_value("thrifty_controller_connected") == 0
        await client.start()
        await _wait(lambda: registry.get_sample_value("thrifty_controller_connected") == 1)
        await server.stop(None)
        await _wait(lambda: registry.get_sample_value("thrifty_controller_connected") == 0)
    finally:
        await client.stop()
        await server.stop(None)


# -- validation -------------------------------------------------------------------------
async def test_future_dated_windows_cannot_blind_the_fleet_view() -> None:
    """Finding: 400 windows dated ~116 days ahead made real telemetry drop until restart."""
    plane, server, port = await controller()
    raw = RawSidecar(port)
    try:
        await raw.open("sidecar-t")
        ahead = time.time() + 116 * 86400
        for i in range(400):
            await raw.send(window(i + 1, end=ahead + 10 * i, requests=1))
        await raw.send(window(1000, requests=7))
        assert await raw.next_ack() == 1000  # none of the 400 was acknowledged
        assert plane.fleet.summary("large", plane.clock() + 10, 60).requests == 7
        assert rejected(plane, "clock_skew") == 400
    finally:
        await raw.close()
        await server.stop(None)


async def test_a_flood_of_tier_names_does_not_grow_state_or_slow_the_fleet_view() -> None:
    """Finding: 40,000 invented tier names grew RSS by 59 MB and /api/v1/fleet took 4.8 s."""
    plane, server, port = await controller()
    raw = RawSidecar(port)
    try:
        await raw.open("sidecar-f")
        for i in range(40):
            tiers = [pb.TierStats(tier=f"t{i}-{j}", requests=1, queue_depth=1) for j in range(1000)]
            await raw.send(pb.StatsWindow(seq=i + 1, window_start=time.time() - 5, window_end=time.time(), tiers=tiers))
        await raw.send(window(99, requests=1))
        while await raw.next_ack() != 99:
            pass
        assert plane.fleet.tier_names == ["small", "large"]
        assert len(plane.fleet._queues) <= 2
        t0 = time.perf_counter()
        plane.fleet_json()
        assert time.perf_counter() - t0 < 0.1
        assert rejected(plane, "unknown_tier") == 40_000
    finally:
        await raw.close()
        await server.stop(None)


@pytest.mark.parametrize("fields", [
    {"dollars": math.nan}, {"dollars": math.inf}, {"baseline_dollars": -1.0},
    {"cache_baseline_dollars": math.inf}, {"queue_depth": 1e12},
    {"requests": 2**63}, {"ttft": pb.Histogram(bounds=[0.2, 0.1], counts=[0, 0, 0])},
    {"ttft": pb.Histogram(bounds=[0.1], counts=[5, 5], count=1)},
    {"replicas": [pb.ReplicaStats(url="http://r", kv_cache_usage=7.0)]},
    {"replicas": [pb.ReplicaStats(url="http://r\nINJECTED", waiting=1)]},
    {"replicas": [pb.ReplicaStats(url=f"http://r{i}") for i in range(300)]},
])
async def test_out_of_range_fields_drop_the_window(fields) -> None:
    plane, server, port = await controller()
    raw = RawSidecar(port)
    try:
        await raw.open("sidecar-v")
        await raw.send(window(1, **{"requests": 3, **fields}))
        await raw.send(window(2, requests=1))
        assert await raw.next_ack() == 2
        assert plane.fleet.summary("large", plane.clock() + 10, 60).requests == 1
        assert rejected(plane, "bad_window") == 1
    finally:
        await raw.close()
        await server.stop(None)


async def test_a_reused_sidecar_id_does_not_count_zero_sidecars() -> None:
    """Finding: two streams with one id; when one closed the controller counted 0 sidecars."""
    plane, server, port = await controller()
    a, b = RawSidecar(port), RawSidecar(port)
    try:
        await a.open("pod-1")
        await b.open("pod-1")
        assert plane.fleet_json()["sidecars"] == 1
        await b.close()
        await _wait(lambda: plane.sidecars.get("pod-1") == 1)
        assert plane.fleet_json()["sidecars"] == 1
        assert plane.metrics.registry.get_sample_value("thrifty_controller_sidecars") == 1
    finally:
        await a.close()
        await server.stop(None)
    await _wait(lambda: not plane.sidecars)


@pytest.mark.parametrize("sidecar_id", ["a\nWARNING forged log line", "x" * 129, "", "bad id", "é"])
async def test_bad_sidecar_ids_are_refused_and_never_logged_raw(sidecar_id, caplog) -> None:
    """Finding: newlines in the sidecar id were written into the controller's log lines."""
    plane, server, port = await controller()
    raw = RawSidecar(port)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as err:
            await raw.open(sidecar_id)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not plane.sidecars
        assert all("\n" not in r.getMessage() for r in caplog.records)
    finally:
        await raw.close()
        await server.stop(None)


async def test_bounded_number_of_sidecars() -> None:
    plane, server, port = await controller(max_sidecars=2)
    raws = [RawSidecar(port) for _ in range(3)]
    try:
        await raws[0].open("pod-a")
        await raws[1].open("pod-b")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raws[2].open("pod-c")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sorted(plane.sidecars) == ["pod-a", "pod-b"]
    finally:
        for r in raws:
            await r.close()
        await server.stop(None)


# -- TLS -----------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=thrifty-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:thrifty-controller,IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=d)
    return d


async def test_mutual_tls_stream(certs: Path) -> None:
    server_tls = auth.TlsFiles(ca=str(certs / "ca.crt"), cert=str(certs / "server.crt"), key=str(certs / "server.key"))
    plane, server, port = await controller(tls=server_tls)
    side = CollectorRegistry()
    requests = Counter("thrifty_requests_total", "", ["tier", "outcome", "cache"], registry=side)
    client_tls = auth.TlsFiles(ca=str(certs / "ca.crt"), cert=str(certs / "client.crt"), key=str(certs / "client.key"),
                               server_name="thrifty-controller")
    client = TelemetryClient(f"127.0.0.1:{port}", side, "pod-tls", lambda p: None, interval_s=0.05, token=TOKEN,
                             tls=client_tls)
    try:
        await client.start()
        await _wait(lambda: client.connected)
        requests.labels("large", "ok", "miss").inc(4)
        await _wait(lambda: plane.fleet.summary("large", plane.clock() + 10, 60).requests == 4)
    except BaseException:
        await server.stop(None)
        raise
    finally:
        await client.stop()
    # Without a client certificate, and in plain text, the handshake never completes.
    no_cert = grpc.aio.secure_channel(f"127.0.0.1:{port}", auth.channel_credentials(
        auth.TlsFiles(ca=str(certs / "ca.crt"))), options=[("grpc.ssl_target_name_override", "thrifty-controller")])
    for channel in (no_cert, grpc.aio.insecure_channel(f"127.0.0.1:{port}")):
        raw = RawSidecar(port, channel)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(raw.open("pod-x"), 10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await raw.close()
    assert list(plane.sidecars) == []
    await server.stop(None)


# -- the CLI -------------------------------------------------------------------------------
def _controller_args(tmp_path: Path, *extra: str):
    import argparse

    import yaml

    from thrifty.controller import cli

    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli, parser.parse_args(["--config", str(cfg), "--no-kube", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", *extra])


def test_controller_refuses_to_start_without_a_telemetry_token(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.setenv("THRIFTY_CONTROLLER_TOKEN", "api-token")
    cli, args = _controller_args(tmp_path)
    assert cli.run(args) == 2
    assert "THRIFTY_TELEMETRY_TOKEN" in capsys.readouterr().err
    (tmp_path / "short").write_text("short\n")
    cli, args = _controller_args(tmp_path, "--telemetry-token-file", str(tmp_path / "short"))
    assert cli.run(args) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_api_token_comes_from_a_file(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("THRIFTY_CONTROLLER_TOKEN", raising=False)
    cli, args = _controller_args(tmp_path, "--token-file", str(tmp_path / "missing"))
    assert cli.run(args) == 2
    assert "--token-file" in capsys.readouterr().err
    (tmp_path / "tok").write_text("-starts-with-a-dash\n")
    assert cli._api_token(_controller_args(tmp_path, "--token-file", str(tmp_path / "tok"))[1]) == "-starts-with-a-dash"


def test_sidecar_refuses_telemetry_without_a_token(tmp_path, monkeypatch) -> None:
    import argparse

    from thrifty.config import ConfigError
    from thrifty.proxy.main import telemetry_credentials

    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    config = parse_config(CONFIG)
    with pytest.raises(ConfigError, match="THRIFTY_TELEMETRY_TOKEN"):
        telemetry_credentials(config, argparse.Namespace(telemetry_token_file=None, insecure_telemetry=False))
    assert telemetry_credentials(config, argparse.Namespace(telemetry_token_file=None, insecure_telemetry=True))[0] is None
    monkeypatch.setenv(auth.TOKEN_ENV, " from-the-environment-0001\n")
    assert telemetry_credentials(config, argparse.Namespace(telemetry_token_file=None, insecure_telemetry=False))[0] \
        == b"from-the-environment-0001"
