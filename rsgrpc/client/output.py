"""What a tool returns: Remotior's `OutputManager`, with the gRPC outcome beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class GrpcResult:
    """How the call ended on the wire: the status code's name ("OK" on success), its
    message, the ErrorInfo reason and metadata, and the tool's response message."""

    code: str = "OK"
    message: str = ""
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    response: Any = None


class OutputManager:
    """A tool's outcome as Remotior returns it: `check` is False on failure, `paths` lists
    the outputs and `path` is the first; `extra` is None where Remotior's is, and on failure
    ``{"message": ...}`` as Remotior's band calc reports one. rsgrpc's details (status
    code, message, reason, response message) are in `grpc`."""

    def __init__(
        self,
        check: bool = True,
        path: str | None = None,
        paths: list[str] | None = None,
        extra: Any = None,
        *,
        grpc: GrpcResult | None = None,
    ) -> None:
        self.check = check
        self.paths = paths
        self.path = path if path is not None else (paths[0] if paths else None)
        self.extra = extra
        self.grpc = grpc if grpc is not None else GrpcResult()

    def __repr__(self) -> str:
        return (
            f"OutputManager(check={self.check!r}, path={self.path!r}, paths={self.paths!r}, "
            f"extra={self.extra!r}, grpc=GrpcResult(code={self.grpc.code!r}, "
            f"message={self.grpc.message!r}))"
        )


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return grpc.StatusCode.UNKNOWN.name


def status_result(code: int, message: str, details: Sequence[Any]) -> GrpcResult:
    """A GrpcResult from a google.rpc.Status's parts."""
    result = GrpcResult(code=_code_name(code), message=message)
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            result.reason = info.reason
            result.metadata = dict(info.metadata)
    return result


def rpc_error_result(error: grpc.RpcError) -> GrpcResult:
    """A GrpcResult from a refused call."""
    status = rpc_status.from_call(error)
    if status is None:
        return GrpcResult(code=error.code().name, message=error.details() or "")
    return status_result(status.code, status.message, status.details)


def failed(result: GrpcResult, extra: Any = None) -> OutputManager:
    """A failed outcome: Remotior's ``extra={"message": ...}`` unless given another."""
    return OutputManager(
        check=False, extra=extra if extra is not None else {"message": result.message}, grpc=result
    )
