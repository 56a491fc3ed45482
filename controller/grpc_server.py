"""The telemetry gRPC service: one bidirectional stream per sidecar.

The handler reads the sidecar's messages in a task of its own while the response side
yields policy updates and acks, so a slow sidecar never delays another's policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from thrifty.wire import telemetry_pb2 as pb
from thrifty.wire import telemetry_pb2_grpc as pb_grpc
from thrifty.wire.codec import policy_to_pb, window_from_pb
from thrifty.controller.service import ControlPlane

log = logging.getLogger(__name__)


class TelemetryService(pb_grpc.TelemetryServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    async def Stream(self, request_iterator: AsyncIterator[pb.SidecarMessage],  # noqa: N802 - gRPC name
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ControllerMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "hello" or not first.hello.sidecar_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello with a sidecar_id")
            return
        sidecar_id = first.hello.sidecar_id
        policies = self.plane.connect(sidecar_id)
        out: asyncio.Queue[pb.ControllerMessage | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    if msg.WhichOneof("kind") == "window":
                        try:
                            self.plane.ingest(sidecar_id, window_from_pb(msg.window))
                        except ValueError as exc:
                            log.warning("sidecar %s sent a bad window: %s", sidecar_id, exc)
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


async def start_grpc(plane: ControlPlane, address: str) -> tuple[grpc.aio.Server, int]:
    """Start the server on `address` ("host:port", port 0 = free); returns (server, port)."""
    server = grpc.aio.server()
    pb_grpc.add_TelemetryServicer_to_server(TelemetryService(plane), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
