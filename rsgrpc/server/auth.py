"""Who is calling: named bearer tokens or mTLS client certificates, checked by one
server interceptor; health checks are exempt.

A call's identity names the owner of the sessions and operations it creates. Without
tokens or client certificates every caller is `anonymous` and shares them all.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from rsgrpc.engine.log_context import IDENTITY
from rsgrpc.server.status import entered_first

ANONYMOUS = "anonymous"
# A token file's line with a token and no name gives the token this identity.
DEFAULT_TOKEN_NAME = "default"
_EXEMPT_PREFIX = f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/"


@dataclass(frozen=True)
class Caller:
    """The identity a call is made as, and whether it may act on every identity's resources."""

    identity: str
    admin: bool = False

    @property
    def owner(self) -> str | None:
        """The owner whose resources this caller sees: its own, or None (every owner's)."""
        return None if self.admin else self.identity


_ANONYMOUS_CALLER = Caller(ANONYMOUS)
# Each call runs in its own asyncio task, with its own copy of this variable.
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("rsgrpc_caller")


def current_caller() -> Caller:
    """The caller of the RPC being served (anonymous when the server checks no identity)."""
    return _CALLER.get(_ANONYMOUS_CALLER)


def read_tokens(path: str | Path) -> dict[str, str]:
    """The identities of a token file, name to token.

    Each line is `NAME TOKEN`; blank lines and lines starting with `#` are ignored. A line
    with one word is a token of the identity `default` (a file written for a server with
    one token keeps working). Names and tokens must be unique. Raises ValueError naming
    the line, never its token.
    """
    tokens: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2:
            raise ValueError(f"{path}, line {number}: expected NAME TOKEN, got {len(words)} words")
        name, token = words if len(words) == 2 else (DEFAULT_TOKEN_NAME, words[0])
        if name in tokens:
            raise ValueError(f"{path}, line {number}: the name {name!r} is given twice")
        if token in tokens.values():
            raise ValueError(f"{path}, line {number}: this token is given to two names")
        tokens[name] = token
    if not tokens:
        raise ValueError(f"{path} holds no token")
    return tokens


def _digest(token: bytes) -> bytes:
    # Digests have one length, so that comparing them takes the same time for any token.
    return hashlib.sha256(token).digest()


class Authenticator:
    """Names the caller of each call, or refuses it.

    With tokens, a call must carry `authorization: Bearer TOKEN` and is made as the
    token's name. Otherwise, with client certificates (mutual TLS), it is made as the
    common name of the certificate's subject. Callers named in `admins` see and act on
    every identity's sessions and operations.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, str],
        certificates: bool,
        admins: Collection[str],
    ) -> None:
        self._tokens = [(_digest(token.encode()), name) for name, token in tokens.items()]
        self._certificates = certificates
        self._admins = frozenset(admins)

    def caller(self, context: grpc.aio.ServicerContext) -> Caller | str:
        """The caller of a call, or why it is refused."""
        if self._tokens:
            identity = self._token_identity(context.invocation_metadata() or ())
            if identity is None:
                return "a valid bearer token is required"
        elif self._certificates:
            names = context.auth_context().get("x509_common_name") or []
            if not names:
                return "the client certificate's subject has no common name"
            identity = names[0].decode()
        else:
            identity = ANONYMOUS
        return Caller(identity, admin=identity in self._admins)

    def _token_identity(self, metadata) -> str | None:
        presented = next((value for key, value in metadata if key == "authorization"), "")
        scheme, _, token = str(presented).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = _digest(token.strip().encode())
        found = None
        # Every token is compared, so the time taken does not tell which one matched.
        for digest, name in self._tokens:
            if hmac.compare_digest(given, digest):
                found = name
        return found


class IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Runs each call (health checks excepted) as its caller, or ends it UNAUTHENTICATED."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_EXEMPT_PREFIX):
            return handler
        authenticator = self._authenticator

        async def enter(context: grpc.aio.ServicerContext) -> None:
            caller = authenticator.caller(context)
            if isinstance(caller, str):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, caller)
            _CALLER.set(caller)
            IDENTITY.set(caller.identity)

        return entered_first(handler, enter)
