"""A channel to rsgrpc, and a server's limits as its refusals name them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from rsgrpc.client.output import GrpcResult

# The largest answer taken: the server's default message limit.
_MAX_ANSWER_BYTES = 16 << 20


def connect(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to rsgrpc, with keepalive settings the server accepts, taking answers as
    large as the server sends by default (a batch of 100,000 downloads answers about 5 MB)."""
    options = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", _MAX_ANSWER_BYTES),
        *options,
    ]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def allowed_processes(refusal: GrpcResult) -> int | None:
    """The most processes the server would give the session it refused (the ErrorInfo's
    ``max_process_count``), or None when the refusal is about something else."""
    value = refusal.metadata.get("max_process_count")
    return int(value) if value is not None else None


def allowed_ram(refusal: GrpcResult) -> int | None:
    """The most MiB the server has left for the session it refused (the ErrorInfo's
    ``max_available_ram_mib``), or None when the refusal is about something else."""
    value = refusal.metadata.get("max_available_ram_mib")
    return int(value) if value is not None else None
