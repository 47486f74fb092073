"""A channel to rsgrpc, and reading a server's limits out of its refusals."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import grpc

from rsgrpc.client.output import GrpcResult

# The largest answer taken: the server's default message limit.
_MAX_ANSWER_BYTES = 16 << 20

_PROCESS_MAXIMUM = re.compile(r"process_count must be 1 to (\d+), got (\d+)")
_PROCESS_TOTAL = re.compile(r"would use (\d+) processes; its total is (\d+)")
_RAM_TOTAL = re.compile(r"would use (\d+) MiB; its total is (\d+) MiB")


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


def allowed_processes(refusal: GrpcResult, asked: int) -> int | None:
    """The most processes the server would give a session that asked for `asked` and was
    refused, or None when the refusal is about something else.

    The server names its limits in the refusal's message (a session's maximum as
    INVALID_ARGUMENT, the total left over its sessions as RESOURCE_EXHAUSTED); an
    ErrorInfo ``max_process_count`` entry, where a server sends one, is taken first.
    """
    if "max_process_count" in refusal.metadata:
        return int(refusal.metadata["max_process_count"])
    if match := _PROCESS_MAXIMUM.search(refusal.message):
        return int(match.group(1))
    if match := _PROCESS_TOTAL.search(refusal.message):
        used, total = int(match.group(1)), int(match.group(2))
        return total - (used - asked)
    return None


def allowed_ram(refusal: GrpcResult, asked: int) -> int | None:
    """The most MiB the server has left for a session that asked for `asked` and was
    refused, or None when the refusal is about something else."""
    if match := _RAM_TOTAL.search(refusal.message):
        used, total = int(match.group(1)), int(match.group(2))
        return total - (used - asked)
    return None
