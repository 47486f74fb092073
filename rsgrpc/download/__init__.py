"""Rate-limited, multithreaded OAuth2 download client for Sentinel Hub-style APIs, with a disk cache.

Usable without gRPC. Names follow sentinelhub-py's ``sentinelhub.download`` so its users can switch.
"""

from .cache import redact_headers
from .client import DownloadClient, ProgressCallback
from .decoding import decode_data
from .deployment import Deployment, RetryPolicy
from .errors import (
    AuthenticationError,
    BadRequestError,
    CacheCollisionError,
    CacheWriteError,
    DecodingError,
    DownloadCancelledError,
    DownloadError,
    DownloadFailedException,
    DownloadFailedWarning,
    HashedNameCollisionException,
    InvalidRequestError,
    NotFoundError,
    OutOfRequestsError,
    OutOfRequestsException,
    ServerError,
)
from .rate_limit import RateLimiter, RateLimiterStats, forget_limiters, limiter_for
from .request import DownloadRequest, MimeType, RequestType
from .response import DownloadResponse
from .result import DownloadResult, DownloadStatus
from .retry_after import parse_retry_after
from .sentinelhub_client import SentinelHubDownloadClient
from .session import SentinelHubSession

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "CacheCollisionError",
    "CacheWriteError",
    "DecodingError",
    "Deployment",
    "DownloadCancelledError",
    "DownloadClient",
    "DownloadError",
    "DownloadFailedException",
    "DownloadFailedWarning",
    "DownloadRequest",
    "DownloadResponse",
    "DownloadResult",
    "DownloadStatus",
    "HashedNameCollisionException",
    "InvalidRequestError",
    "MimeType",
    "NotFoundError",
    "OutOfRequestsError",
    "OutOfRequestsException",
    "ProgressCallback",
    "RateLimiter",
    "RateLimiterStats",
    "RequestType",
    "RetryPolicy",
    "SentinelHubDownloadClient",
    "SentinelHubSession",
    "ServerError",
    "decode_data",
    "forget_limiters",
    "limiter_for",
    "parse_retry_after",
    "redact_headers",
]
