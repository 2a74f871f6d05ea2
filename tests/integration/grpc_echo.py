"""A real gRPC server and client (grpcio) for the gRPC tests, without generated code: methods
of service `echo.Echo` take and return raw bytes (identity serializers)."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Sequence

import grpc

from harness import LOOPBACK, REQUEST_TIMEOUT_S, STOP_TIMEOUT_S

SERVICE = "echo.Echo"
# Both answer with the request's bytes; they differ only in the rules that name their paths.
METHODS = ("Say", "Admin")


def method_path(method: str) -> str:
    """The HTTP/2 `:path` of a call, which the plugin's rules match."""
    return f"/{SERVICE}/{method}"


@dataclass
class Call:
    method: str
    request: bytes
    metadata: list[tuple[str, str | bytes]]

    def values(self, name: str) -> list[str | bytes]:
        return [v for k, v in self.metadata if k == name.lower()]


class EchoGrpcServer:
    """A grpcio server on a free loopback port (plaintext HTTP/2) that answers every method of
    `echo.Echo` with the request bytes and keeps each call's method, request and metadata."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._handler(name)) for name in METHODS}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port(f"{LOOPBACK}:0")
        self.server.start()

    def _handler(self, method: str):
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self._calls.append(Call(method, request, list(context.invocation_metadata())))
            return request

        return handle

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def stop(self) -> None:
        self.server.stop(grace=None).wait(STOP_TIMEOUT_S)


class EchoClient:
    """An insecure channel to `port` (grpcio then speaks HTTP/2 with prior knowledge)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"{LOOPBACK}:{port}")

    def call(self, method: str, request: bytes, metadata: Sequence[tuple[str, str]] = (),
             timeout: float = REQUEST_TIMEOUT_S) -> tuple[bytes, grpc.Call]:
        """(reply bytes, call) of a unary call; a non-OK status raises `grpc.RpcError`, which
        is also a `grpc.Call` (`code()`, `details()`, `initial_metadata()`,
        `trailing_metadata()`)."""
        stub = self.channel.unary_unary(method_path(method), request_serializer=None, response_deserializer=None)
        return stub.with_call(request, metadata=tuple(metadata), timeout=timeout)

    def close(self) -> None:
        self.channel.close()
