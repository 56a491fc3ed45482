"""The telemetry gRPC service: one bidirectional stream per sidecar.

Each stream starts with the mutual token handshake of `thrifty.wire.auth` (the
controller proves itself in its initial metadata, the sidecar in its Hello); only
then is the sidecar registered and sent policy. Every window goes through
`ControlPlane.receive`, which checks it before it reaches the fleet view.

The handler reads the sidecar's messages in a task of its own while the response side
yields policy updates and acks, so a slow sidecar never delays another's policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from thrifty.controller.intake import Rejected, check_sidecar_id
from thrifty.controller.service import ControlPlane
from thrifty.wire import auth
from thrifty.wire import telemetry_pb2 as pb
from thrifty.wire import telemetry_pb2_grpc as pb_grpc
from thrifty.wire.codec import policy_to_pb, window_from_pb

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 1 << 20  # a real window is a few KB; bigger ones are refused by gRPC itself
HELLO_TIMEOUT_S = 10.0


class TelemetryService(pb_grpc.TelemetryServicer):
    """`token` None: no authentication (only with the controller's explicit --insecure-telemetry)."""

    def __init__(self, plane: ControlPlane, token: bytes | None) -> None:
        self.plane = plane
        self.token = token

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, msg: str) -> None:
        self.plane.metrics.telemetry_rejected.labels(reason).inc()
        log.warning("telemetry stream from %s refused: %s", auth.printable(context.peer()), auth.printable(msg, 200))
        await context.abort(code, msg)

    async def Stream(self, request_iterator: AsyncIterator[pb.SidecarMessage],  # noqa: N802 - gRPC name
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ControllerMessage]:
        sidecar_nonce = controller_nonce = ""
        if self.token is not None:
            sidecar_nonce = auth.metadata_value(context.invocation_metadata(), auth.NONCE_KEY) or ""
            if not auth.valid_nonce(sidecar_nonce):
                await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated",
                                   f"telemetry needs the token handshake ({auth.NONCE_KEY} metadata missing)")
                return
            controller_nonce = auth.new_nonce()
            await context.send_initial_metadata((
                (auth.NONCE_KEY, controller_nonce),
                (auth.PROOF_KEY, auth.controller_proof(self.token, sidecar_nonce, controller_nonce)),
            ))
        try:
            first = await asyncio.wait_for(anext(aiter(request_iterator), None), HELLO_TIMEOUT_S)
        except TimeoutError:
            first = None
        if first is None or first.WhichOneof("kind") != "hello":
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_hello",
                               "the first message must be a Hello with a sidecar_id")
            return
        sidecar_id = first.hello.sidecar_id
        if self.token is not None and not auth.same(
                first.hello.proof, auth.sidecar_proof(self.token, controller_nonce, sidecar_nonce, sidecar_id)):
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated",
                               "the Hello's proof does not match the telemetry token")
            return
        try:
            check_sidecar_id(sidecar_id)
            policies = self.plane.connect(sidecar_id)
        except Rejected as exc:
            if exc.reason == "too_many_sidecars":
                await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, exc.reason, str(exc))
            else:
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, str(exc))
            return
        out: asyncio.Queue[pb.ControllerMessage | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    if msg.WhichOneof("kind") != "window":
                        continue
                    try:
                        self.plane.receive(sidecar_id, window_from_pb(msg.window))
                    except ValueError as exc:  # Rejected, or a malformed histogram from the codec
                        log.warning("sidecar %s sent a window that was dropped: %s", sidecar_id, auth.printable(exc, 200))
                        continue
                    out.put_nowait(pb.ControllerMessage(ack=pb.Ack(seq=msg.window.seq)))
            finally:
                out.put_nowait(None)

        async def forward_policy() -> None:
            while True:
                policy = await policies.get()
                out.put_nowait(pb.ControllerMessage(policy=policy_to_pb(policy)))

        reader = asyncio.create_task(read())
        forwarder = asyncio.create_task(forward_policy())
        log.info("sidecar %s connected", sidecar_id)
        try:
            while (msg := await out.get()) is not None:
                yield msg
        finally:
            forwarder.cancel()
            reader.cancel()
            self.plane.disconnect(sidecar_id, policies)
            log.info("sidecar %s disconnected", sidecar_id)


async def start_grpc(plane: ControlPlane, address: str, *, token: bytes | None,
                     tls: auth.TlsFiles | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the server on `address` ("host:port", port 0 = free); returns (server, port).

    `token` None serves without authentication (development only: the CLI requires an
    explicit flag for it); `tls` with cert + key serves TLS (with ca: mutual TLS)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    pb_grpc.add_TelemetryServicer_to_server(TelemetryService(plane, token), server)
    if tls is not None and tls.enabled:
        port = server.add_secure_port(address, auth.server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
