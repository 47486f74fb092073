"""Errors and warnings of the download client, under sentinelhub-py's names.

sentinelhub-py's exception and warning classes are declared here by the same names. When
sentinelhub-py is installed each one subclasses its namesake, so ``except
sentinelhub.DownloadFailedException`` catches our failures too; without it they stand alone.

Our own errors hang below `DownloadError` (itself a `DownloadFailedException`): one subclass
per way a download can fail, each with a stable ``reason`` (an ``ErrorInfo`` reason for a
service front-end) and the gRPC status a front-end is expected to map it to, named in its
docstring. Messages never include credentials or tokens.
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    from sentinelhub import exceptions as _sentinelhub
except ImportError:
    _sentinelhub = None


def _theirs(name: str) -> tuple[type, ...]:
    """sentinelhub-py's class of that name as an extra base, when it is installed."""
    if _sentinelhub is None:
        return ()
    found = getattr(_sentinelhub, name, None)
    return (found,) if isinstance(found, type) else ()


class BaseSentinelHubException(*_theirs("BaseSentinelHubException"), Exception):  # type: ignore[misc]
    """Raised by nothing itself; the root of sentinelhub-py's exceptions."""


class DownloadFailedException(  # type: ignore[misc]
    BaseSentinelHubException, *_theirs("DownloadFailedException")
):
    """Raised when a download fails (sentinelhub-py's general download error)."""

    def __init__(self, msg: str, *, request_exception: Any | None = None) -> None:
        Exception.__init__(self, msg)
        self.request_exception = request_exception


class OutOfRequestsException(DownloadFailedException, *_theirs("OutOfRequestsException")):  # type: ignore[misc]
    """Raised when the account is out of requests or processing units."""


class AwsDownloadFailedException(  # type: ignore[misc]
    DownloadFailedException, *_theirs("AwsDownloadFailedException")
):
    """Raised when a file is missing on AWS (kept for sentinelhub-py's name)."""


class ImageDecodingError(BaseSentinelHubException, *_theirs("ImageDecodingError")):  # type: ignore[misc]
    """Raised when downloaded data cannot be decoded."""


class MissingDataInRequestException(  # type: ignore[misc]
    BaseSentinelHubException, *_theirs("MissingDataInRequestException")
):
    """Raised when an answer lacks the data it was expected to hold (``get_json_dict``)."""


class HashedNameCollisionException(  # type: ignore[misc]
    BaseSentinelHubException, *_theirs("HashedNameCollisionException")
):
    """Raised when two different requests hash to the same cache folder."""


class SHDeprecationWarning(*_theirs("SHDeprecationWarning"), DeprecationWarning):  # type: ignore[misc]
    """Warned when a deprecated form of a call is used."""


class SHUserWarning(*_theirs("SHUserWarning"), UserWarning):  # type: ignore[misc]
    """Warned when a call is likely not what the user meant."""


class SHRuntimeWarning(*_theirs("SHRuntimeWarning"), RuntimeWarning):  # type: ignore[misc]
    """Warned when something went wrong at run time without stopping the call."""


class SHRateLimitWarning(SHRuntimeWarning, *_theirs("SHRateLimitWarning")):  # type: ignore[misc]
    """Warned when the service answers that the rate limit was hit."""


class DownloadFailedWarning(SHRuntimeWarning):
    """Warned instead of raising when a client is made with ``raise_download_errors=False``
    (sentinelhub-py warns an ``SHRuntimeWarning``, which this is)."""


# sentinelhub-py shows its runtime warnings every time and the others once per place.
warnings.simplefilter("default", SHDeprecationWarning)
warnings.simplefilter("default", SHUserWarning)
warnings.simplefilter("always", SHRuntimeWarning)


class DownloadError(DownloadFailedException):
    """Raised when a download request fails; the root of this library's download errors."""

    reason = "DOWNLOAD_FAILED"

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status_code: int | None = None,
        request_exception: Any | None = None,
    ):
        super().__init__(message, request_exception=request_exception)
        self.url = url
        self.status_code = status_code


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


class OutOfRequestsError(DownloadError, OutOfRequestsException):
    """Raised when 429 answers exhaust the retry budget (RESOURCE_EXHAUSTED)."""

    reason = "RATE_LIMIT_RETRIES_EXHAUSTED"


class ServerError(DownloadError):
    """Raised when 5xx answers, connection resets or timeouts exhaust the retries (UNAVAILABLE)."""

    reason = "SERVER_ERRORS_EXHAUSTED"


class SharedLimitUnavailableError(ServerError):
    """Raised when the store of a fleet's shared rate limit cannot be reached or answers an
    error, so the request cannot be paced; retried like a server error (UNAVAILABLE)."""

    reason = "SHARED_LIMIT_UNAVAILABLE"


class DownloadCancelledError(DownloadError):
    """Raised when a request is cancelled before or between its attempts (CANCELLED)."""

    reason = "CANCELLED"


class CacheCollisionError(DownloadError, HashedNameCollisionException):
    """Raised when a cached ``request.json`` describes a different request than the one
    hashed to its folder (FAILED_PRECONDITION)."""

    reason = "CACHE_COLLISION"


class DecodingError(DownloadError, ImageDecodingError, ValueError):
    """Raised when downloaded or cached bytes cannot be decoded as the expected type (DATA_LOSS)."""

    reason = "DECODING_FAILED"


class CacheWriteError(DownloadError, OSError):
    """Raised when a downloaded answer cannot be written to the cache folder (INTERNAL if the
    server owns the folder, else FAILED_PRECONDITION)."""

    reason = "CACHE_WRITE_FAILED"


class DeadlineExceededError(ServerError):
    """Raised when a request cannot end before the caller's deadline: a rate-limit pause, a
    retry's backoff or a token endpoint outage would outlast it (DEADLINE_EXCEEDED)."""

    reason = "DEADLINE_EXCEEDED"


class IncompleteAnswerError(ServerError):
    """Raised when an answer's body is cut short or does not match its Content-Length,
    after the retries (UNAVAILABLE)."""

    reason = "INCOMPLETE_ANSWER"


class UndecodableAnswerError(DecodingError):
    """Raised when an answer (downloaded or cached) does not decode as its type, after the
    retries (DATA_LOSS)."""

    reason = "UNDECODABLE_ANSWER"
