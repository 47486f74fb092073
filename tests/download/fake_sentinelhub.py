"""A fake Sentinel Hub deployment on 127.0.0.1 for tests and the download benchmark.

A threaded HTTP/1.1 keep-alive server with an OAuth2 token endpoint (expiring JWT-shaped
tokens) and a processing endpoint answering real GeoTIFFs (and PNG, JPEG, JSON, XML, ZIP,
TAR, text or raw bytes, and GeoTIFFs of any size generated as they are sent). It enforces
per-client rate limits with 429 answers carrying each kind of ``Retry-After``, reports
processing units, and injects faults on request: 5xx answers, connection resets, answers
cut short (reset, closed, or chunked without its end), wrong Content-Lengths, truncated or
garbled bodies under a consistent length, slow answers, 401s, errors that echo the request's
headers and token, and token endpoint failures or outages. It counts connections opened,
requests and answers by status.

The processing endpoint reads a JSON body ``{"id": str, "format": "tiff" | "png" | "jpeg" |
"json" | "xml" | "zip" | "tar" | "text" | "raw" | "large_tiff", "size": int}``; the answer
depends only on the body (see `body_for` and `large_tiff`). ``PUBLIC_PATH`` answers the
same without a token, rate limited as one client.
"""

from __future__ import annotations

import base64
import collections
import email.utils
import hashlib
import io
import json
import math
import socket
import struct
import tarfile
import threading
import time
import urllib.parse
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

CLIENT_ID = "test-client"
CLIENT_SECRET = "s3cret-Value-never-shown"
TOKEN_PATH = "/oauth/token"
PROCESS_PATH = "/api/v1/process"
PUBLIC_PATH = "/public/v1/process"

RETRY_AFTER_KINDS = ("ms", "ms_decimal", "s", "s_decimal", "date", "missing")

_TIFF_VARIANTS = 8
# A held request whose event is never set is reset after this long, so a failing test ends.
_HOLD_LIMIT_SECONDS = 60.0


@dataclass
class ServerStats:
    connections_opened: int = 0
    token_requests: int = 0
    process_requests: int = 0
    rate_limited: int = 0
    unauthorized: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    in_flight: int = 0
    max_in_flight: int = 0


class _Bucket:
    def __init__(self, rate: float, capacity: float):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic()

    def take(self, cost: float) -> float | None:
        """Take ``cost``; None if allowed, else seconds until it would be."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return None
        return (cost - self.tokens) / self.rate


class FakeSentinelHub:
    """The fake deployment. Use as a context manager; ``base_url`` is set once started."""

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        burst: float | None = None,
        retry_after: str = "ms",
        token_lifetime: float = 3600.0,
        latency: float = 0.0,
        processing_units_per_request: float | None = None,
        processing_units_per_second: float | None = None,
        processing_units_burst: float | None = None,
        slow_seconds: float = 2.0,
    ):
        if retry_after not in RETRY_AFTER_KINDS:
            raise ValueError(f"unsupported retry_after, got {retry_after!r}")
        self.requests_per_second = requests_per_second
        self.burst = burst if burst is not None else (requests_per_second or 1.0)
        self.retry_after = retry_after
        self.token_lifetime = token_lifetime
        self.latency = latency
        self.processing_units_per_request = processing_units_per_request
        self.processing_units_per_second = processing_units_per_second
        self.processing_units_burst = processing_units_burst
        self.slow_seconds = slow_seconds
        self.stats = ServerStats()
        # Faults are consumed one per attempt: {"<id>": ["500", "reset", ...]}.
        self.faults: dict[str, list[str]] = {}
        self.token_faults: list[str] = []
        # Requests whose answer waits until their event is set: {"<id>": Event}.
        self.holds: dict[str, threading.Event] = {}
        self.reject_all_tokens = False
        # The token endpoint answers 503 until this moment of `outage_clock`.
        self.token_outage_until = 0.0
        self.outage_clock: Any = time
        self.sent: dict[str, bytes] = {}
        # (monotonic time, status, Retry-After) of every processing answer, in order.
        self.answers: list[tuple[float, int, str | None]] = []
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._unit_buckets: dict[str, _Bucket] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeSentinelHub:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        for variant in range(_TIFF_VARIANTS):
            _images("GTiff", variant)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def process_url(self) -> str:
        return self.base_url + PROCESS_PATH

    def revoke_tokens(self) -> None:
        """Forget every issued token, as if all had expired."""
        with self._lock:
            self._tokens.clear()

    def token_outage(self, seconds: float, clock: Any = time) -> None:
        """Make the token endpoint answer 503 for ``seconds`` of ``clock`` (anything with a
        ``monotonic()``), from now."""
        with self._lock:
            self.outage_clock = clock
            self.token_outage_until = clock.monotonic() + seconds

    def in_token_outage(self) -> bool:
        with self._lock:
            clock, until = self.outage_clock, self.token_outage_until
        return clock.monotonic() < until

    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._tokens)

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = ServerStats()

    # -- answers ------------------------------------------------------------------------------

    @staticmethod
    def body_for(payload: dict[str, Any]) -> tuple[bytes, str]:
        """The answer to a processing request and its Content-Type."""
        request_id = str(payload.get("id", ""))
        kind = payload.get("format", "tiff")
        variant = int(hashlib.md5(request_id.encode()).hexdigest(), 16) % _TIFF_VARIANTS
        if kind == "tiff":
            return _images("GTiff", variant), "image/tiff"
        if kind == "png":
            return _images("PNG", variant), "image/png"
        if kind == "jpeg":
            return _images("JPEG", variant), "image/jpeg"
        if kind == "json":
            return json.dumps({"id": request_id, "values": [variant, 1.5]}).encode(), (
                "application/json"
            )
        if kind == "text":
            return f"answer for {request_id}\n".encode(), "text/plain; charset=utf-8"
        if kind == "xml":
            return (
                f'<?xml version="1.0"?><answer id="{request_id}"><value>{variant}</value>'
                "<value>1.5</value></answer>"
            ).encode(), "application/xml"
        if kind == "zip":
            return _zip_of(request_id, variant), "application/zip"
        if kind == "tar":
            return _tar_of(request_id, variant), "application/x-tar"
        size = int(payload.get("size", 64))
        return (request_id.encode() * (size // max(1, len(request_id)) + 1))[:size], (
            "application/octet-stream"
        )

    def _issue_token(self) -> dict[str, Any]:
        claims = {"azp": CLIENT_ID, "sub": CLIENT_ID, "exp": int(time.time() + self.token_lifetime)}
        payload = json.dumps(claims)
        # sentinelhub-py decodes with standard base64 and its own padding: make padding empty.
        while len(payload) % 3:
            payload += " "
        encoded = base64.b64encode(payload.encode()).decode()
        nonce = base64.b16encode(struct.pack(">d", time.time()) + np.random.bytes(8)).decode()
        access_token = f"eyJhbGciOiJub25lIn0.{encoded}.{nonce}"
        with self._lock:
            self._tokens[access_token] = (CLIENT_ID, time.monotonic() + self.token_lifetime)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
        }

    def _client_of(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        with self._lock:
            if self.reject_all_tokens:
                return None
            entry = self._tokens.get(authorization[len("Bearer ") :])
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def _rate_check(self, client: str) -> float | None:
        with self._lock:
            if self.requests_per_second is not None:
                bucket = self._buckets.setdefault(
                    client, _Bucket(self.requests_per_second, self.burst)
                )
                wait = bucket.take(1.0)
                if wait is not None:
                    return wait
            if self.processing_units_per_second is not None:
                bucket = self._unit_buckets.setdefault(
                    client,
                    _Bucket(
                        self.processing_units_per_second,
                        self.processing_units_burst or self.processing_units_per_second,
                    ),
                )
                wait = bucket.take(self.processing_units_per_request or 1.0)
                if wait is not None:
                    return wait
        return None

    def _retry_after_value(self, wait: float) -> str | None:
        kind = self.retry_after
        if kind == "ms":
            return str(math.ceil(wait * 1000))
        if kind == "ms_decimal":
            return f"{wait * 1000 + 0.5:.3f}"
        if kind == "s":
            return str(math.ceil(wait))
        if kind == "s_decimal":
            return f"{wait + 0.0005:.4f}"
        if kind == "date":
            return email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)
        return None

    def take_fault(self, request_id: str) -> str | None:
        with self._lock:
            queue = self.faults.get(request_id)
            if queue:
                return queue.pop(0)
        return None

    def hold(self, request_id: str) -> threading.Event:
        """Keep the answers to ``request_id`` back until the returned event is set."""
        event = threading.Event()
        with self._lock:
            self.holds[request_id] = event
        return event

    def take_token_fault(self) -> str | None:
        with self._lock:
            return self.token_faults.pop(0) if self.token_faults else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeSentinelHub

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self.fake._lock:
            self.fake.stats.connections_opened += 1
        return connection, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        return None

    @property
    def fake(self) -> FakeSentinelHub:
        return self.server.fake

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        with self.fake._lock:
            self.fake.stats.statuses[status] += 1
            if self.path.startswith(PROCESS_PATH):
                retry_after = (headers or {}).get("Retry-After")
                self.fake.answers.append((time.monotonic(), status, retry_after))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._answer(status, json.dumps(value).encode(), "application/json", headers)

    def _head(self, status: int, content_type: str, length: int | None) -> None:
        with self.fake._lock:
            self.fake.stats.statuses[status] += 1
            self.fake.answers.append((time.monotonic(), status, None))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _close_after(self) -> None:
        """End the connection cleanly (FIN): what was sent is all the client gets."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send a TCP reset.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _apply_fault(self, fault: str, body: bytes, content_type: str) -> bool:
        """Act out ``fault``; True if the request has been dealt with."""
        if fault in {"500", "502", "503", "504", "400", "404", "403"}:
            status = int(fault)
            self._json(status, {"error": {"status": status, "message": f"injected {status}"}})
            return True
        if fault == "401":
            with self.fake._lock:
                self.fake.stats.unauthorized += 1
            self._json(401, {"error": {"status": 401, "message": "Token expired"}})
            return True
        if fault == "reset":
            self._reset()
            return True
        if fault == "partial":
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._reset()
            return True
        if fault == "cut":
            # The whole length announced, half the body sent, then a clean close.
            self._head(200, content_type, len(body))
            self.wfile.write(body[: len(body) // 2])
            self._close_after()
            return True
        if fault == "long_length":
            # A Content-Length larger than the body, which is sent whole, then a clean close.
            self._head(200, content_type, len(body) + 100)
            self.wfile.write(body)
            self._close_after()
            return True
        if fault == "short_length":
            # A Content-Length of half the body: the client reads a truncated answer whose
            # length agrees with its header. The rest is sent too, then the connection closed.
            self._head(200, content_type, len(body) // 2)
            self.wfile.write(body)
            self._close_after()
            return True
        if fault == "chunked_cut":
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
            self._close_after()
            return True
        if fault == "truncate":
            # Half the body under a Content-Length that agrees: only decoding can tell.
            self._answer(200, body[: len(body) // 2], content_type)
            return True
        if fault == "garble":
            # Bytes of the right length that are no file of any kind.
            noise = hashlib.sha256(body).digest() * (len(body) // 32 + 1)
            self._answer(200, noise[: len(body)], content_type)
            return True
        if fault in ("echo", "echo_text"):
            # An upstream that quotes the request back, credentials included.
            headers = {key: value for key, value in self.headers.items()}
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if fault == "echo":
                self._json(
                    500,
                    {"error": {"status": 500, "message": f"failed for request {headers}"}},
                )
            else:
                text = f"upstream failed; your token {token} was\n{json.dumps(headers)}"
                self._answer(502, text.encode(), "text/plain")
            return True
        if fault == "slow":
            time.sleep(self.fake.slow_seconds)
            self.close_connection = True
            return True
        if fault == "garbage":
            self._answer(200, b"<html>not a token</html>", "text/html")
            return True
        return False

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        raw = self._read_body()
        path = urllib.parse.urlsplit(self.path).path
        if path == TOKEN_PATH:
            self._token(raw)
        elif path in (PROCESS_PATH, PUBLIC_PATH):
            with self.fake._lock:
                stats = self.fake.stats
                stats.in_flight += 1
                stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                self._process(raw)
            finally:
                with self.fake._lock:
                    self.fake.stats.in_flight -= 1
        else:
            self._json(404, {"error": {"status": 404, "message": "no such endpoint"}})

    def _token(self, raw: bytes) -> None:
        fake = self.fake
        with fake._lock:
            fake.stats.token_requests += 1
        if fake.in_token_outage():
            self._json(503, {"error": "temporarily_unavailable"})
            return
        fault = fake.take_token_fault()
        if fault is not None and self._apply_fault(fault, b"", "application/json"):
            return
        form = urllib.parse.parse_qs(raw.decode())
        if (
            form.get("grant_type") != ["client_credentials"]
            or form.get("client_id") != [CLIENT_ID]
            or form.get("client_secret") != [CLIENT_SECRET]
            or fault == "invalid"
        ):
            self._json(401, {"error": "invalid_client", "error_description": "Invalid client"})
            return
        self._json(200, fake._issue_token())

    def _process(self, raw: bytes) -> None:
        fake = self.fake
        with fake._lock:
            fake.stats.process_requests += 1
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, {"error": {"status": 400, "message": "body is not JSON"}})
            return
        if urllib.parse.urlsplit(self.path).path == PUBLIC_PATH:
            client: str | None = "public"
        else:
            client = fake._client_of(self.headers.get("Authorization"))
        if client is None:
            with fake._lock:
                fake.stats.unauthorized += 1
            self._json(401, {"error": {"status": 401, "message": "Unauthorized"}})
            return
        request_id = str(payload.get("id", ""))
        fault = fake.take_fault(request_id)
        if fault is None:
            wait = fake._rate_check(client)
            if wait is not None:
                with fake._lock:
                    fake.stats.rate_limited += 1
                value = fake._retry_after_value(wait)
                headers = {} if value is None else {"Retry-After": value}
                self._json(
                    429,
                    {"error": {"status": 429, "message": "You have exceeded your rate limit"}},
                    headers,
                )
                return
        if payload.get("format") == "large_tiff":
            self._send_large_tiff(int(payload.get("size", 1 << 20)))
            return
        body, content_type = fake.body_for(payload)
        with fake._lock:
            held = fake.holds.get(request_id)
        if held is not None and not held.wait(_HOLD_LIMIT_SECONDS):
            self._reset()
            return
        if fake.latency:
            time.sleep(fake.latency)
        if fault is not None and self._apply_fault(fault, body, content_type):
            return
        headers = {}
        if fake.processing_units_per_request is not None:
            headers["X-ProcessingUnits-Spent"] = str(fake.processing_units_per_request)
        with fake._lock:
            fake.sent[request_id] = body
        self._answer(200, body, content_type, headers)

    def _send_large_tiff(self, size: int) -> None:
        length, pieces = large_tiff(size)
        self._head(200, "image/tiff", length)
        for piece in pieces:
            self.wfile.write(piece)


_LARGE_WIDTH = 8192
_LARGE_ROWS_PER_STRIP = 128
_LARGE_PIECE = np.arange(1 << 20, dtype=np.uint64).astype(np.uint8).tobytes()


def large_tiff(size: int) -> tuple[int, Iterator[bytes]]:
    """An uncompressed one-band uint8 GeoTIFF of about ``size`` bytes, as its length and its
    bytes in pieces of 1 MiB, made as they are sent (never held whole)."""
    strip = _LARGE_WIDTH * _LARGE_ROWS_PER_STRIP
    strips = max(1, size // strip)
    height = strips * _LARGE_ROWS_PER_STRIP
    tags = [  # (tag, type, count, value): types 3 SHORT, 4 LONG
        (256, 4, 1, _LARGE_WIDTH),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, strips, 0),
        (277, 3, 1, 1),
        (278, 4, 1, _LARGE_ROWS_PER_STRIP),
        (279, 4, strips, 0),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * strips
    data_at = counts_at + 4 * strips
    head = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)))
    for tag, kind, count, value in tags:
        if tag == 273:
            value = offsets_at if strips > 1 else data_at
        elif tag == 279:
            value = counts_at if strips > 1 else strip
        fmt = "<HHIHH" if kind == 3 else "<HHII"
        head += (
            struct.pack(fmt, tag, kind, count, value, 0)
            if kind == 3
            else struct.pack(fmt, tag, kind, count, value)
        )
    head += struct.pack("<I", 0)
    if strips > 1:
        head += struct.pack(f"<{strips}I", *(data_at + i * strip for i in range(strips)))
        head += struct.pack(f"<{strips}I", *([strip] * strips))
    total = len(head) + strips * strip

    def pieces() -> Iterator[bytes]:
        yield bytes(head)
        left = strips * strip
        while left:
            piece = _LARGE_PIECE[: min(left, len(_LARGE_PIECE))]
            left -= len(piece)
            yield piece

    return total, pieces()


def _zip_of(request_id: str, variant: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        # A fixed time in each member's header: the same request always gets the same bytes.
        for name, text in (
            ("answer.json", json.dumps({"id": request_id, "variant": variant})),
            ("values.txt", "\n".join(str(i * variant) for i in range(2000))),
        ):
            member = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(member, text)
    return buffer.getvalue()


def _tar_of(request_id: str, variant: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (
            ("userdata.json", json.dumps({"id": request_id}).encode()),
            ("default.tif", _images("GTiff", variant)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


_IMAGE_CACHE: dict[tuple[str, int], bytes] = {}
_IMAGE_LOCK = threading.Lock()


def _images(driver: str, variant: int) -> bytes:
    key = (driver, variant)
    with _IMAGE_LOCK:
        if key not in _IMAGE_CACHE:
            _IMAGE_CACHE[key] = _encode_image(driver, variant)
        return _IMAGE_CACHE[key]


def _encode_image(driver: str, variant: int) -> bytes:
    """A small image written by GDAL into memory: a 3-band uint16 GeoTIFF, or 3-band uint8 PNG/JPEG."""
    import rasterio.errors
    import rasterio.shutil
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    rng = np.random.default_rng(variant)
    dtype = "uint16" if driver == "GTiff" else "uint8"
    high = 10000 if driver == "GTiff" else 255
    data = rng.integers(0, high, size=(3, 32, 48)).astype(dtype)
    profile: dict[str, Any] = {"width": 48, "height": 32, "count": 3, "dtype": dtype}
    if driver == "GTiff":
        with MemoryFile() as memory_file:
            with memory_file.open(
                driver="GTiff",
                crs="EPSG:32633",
                transform=from_origin(500000 + variant * 480, 5000000, 10, 10),
                **profile,
            ) as dataset:
                dataset.write(data)
            return bytes(memory_file.read())
    with warnings.catch_warnings(), MemoryFile() as source, MemoryFile() as target:
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with source.open(driver="GTiff", **profile) as dataset:
            dataset.write(data)
        with source.open() as dataset:
            rasterio.shutil.copy(dataset, target.name, driver=driver)
        target.seek(0)
        return bytes(target.read())
