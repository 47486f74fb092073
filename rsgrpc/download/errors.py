"""Errors of the download client: one root, one subclass per way a download can fail.

Each class carries a stable ``reason`` (an ``ErrorInfo`` reason for a service
front-end) and the gRPC status a front-end is expected to map it to, named in
its docstring. Messages never include credentials or tokens.
"""

from __future__ import annotations


class DownloadError(Exception):
    """Raised when a download request fails; the root of every download error."""

    reason = "DOWNLOAD_FAILED"

    def __init__(self, message: str, *, url: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.url = url
        self.status_code = status_code


# sentinelhub-py's name for the root error, kept so its users can switch.
DownloadFailedException = DownloadError


class InvalidRequestError(DownloadError, ValueError):
    """Raised when a request is malformed before it is sent (INVALID_ARGUMENT)."""

    reason = "INVALID_REQUEST"


class BadRequestError(DownloadError):
    """Raised when the server answers 4xx other than 401, 403, 404 and 429 (INVALID_ARGUMENT)."""

    reason = "BAD_REQUEST"


class NotFoundError(BadRequestError):
    """Raised when the server answers 404 (NOT_FOUND)."""

    reason = "NOT_FOUND"


class AuthenticationError(DownloadError):
    """Raised when credentials are refused or a 401/403 persists after re-authentication
    (UNAUTHENTICATED; PERMISSION_DENIED when ``status_code`` is 403)."""

    reason = "AUTHENTICATION_FAILED"


class OutOfRequestsError(DownloadError):
    """Raised when 429 answers exhaust the retry budget (RESOURCE_EXHAUSTED)."""

    reason = "RATE_LIMIT_RETRIES_EXHAUSTED"


# sentinelhub-py's name.
OutOfRequestsException = OutOfRequestsError


class ServerError(DownloadError):
    """Raised when 5xx answers, connection resets or timeouts exhaust the retries (UNAVAILABLE)."""

    reason = "SERVER_ERRORS_EXHAUSTED"


class DownloadCancelledError(DownloadError):
    """Raised when a request is cancelled before or between its attempts (CANCELLED)."""

    reason = "CANCELLED"


class CacheCollisionError(DownloadError):
    """Raised when a cached ``request.json`` describes a different request than the one
    hashed to its folder (FAILED_PRECONDITION)."""

    reason = "CACHE_COLLISION"


# sentinelhub-py's name.
HashedNameCollisionException = CacheCollisionError


class DecodingError(DownloadError, ValueError):
    """Raised when downloaded or cached bytes cannot be decoded as the expected type (DATA_LOSS)."""

    reason = "DECODING_FAILED"


class CacheWriteError(DownloadError, OSError):
    """Raised when a downloaded answer cannot be written to the cache folder (INTERNAL if the
    server owns the folder, else FAILED_PRECONDITION)."""

    reason = "CACHE_WRITE_FAILED"


class DownloadFailedWarning(RuntimeWarning):
    """Warned instead of raising when a client is made with ``raise_download_errors=False``."""
