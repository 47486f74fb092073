"""Rate-limited, multithreaded OAuth2 download client for Sentinel Hub-style APIs, with a disk cache.

Usable without gRPC. Names, signatures and decoded results follow sentinelhub-py's
(``SHConfig``, ``DownloadRequest``, ``MimeType``, ``DownloadClient``,
``SentinelHubDownloadClient``, its exceptions and warnings), so its download code runs with
the import changed.
"""

from .cache import redact_headers
from .client import ProgressCallback
from .config import SHConfig
from .decoding import decode_data
from .deployment import Deployment, RetryPolicy
from .errors import (
    AuthenticationError,
    AwsDownloadFailedException,
    BadRequestError,
    BaseSentinelHubException,
    CacheCollisionError,
    CacheWriteError,
    DeadlineExceededError,
    DecodingError,
    DownloadCancelledError,
    DownloadError,
    DownloadFailedException,
    DownloadFailedWarning,
    HashedNameCollisionException,
    ImageDecodingError,
    IncompleteAnswerError,
    InvalidRequestError,
    MissingDataInRequestException,
    NotFoundError,
    OutOfRequestsError,
    OutOfRequestsException,
    ServerError,
    SharedLimitUnavailableError,
    SHDeprecationWarning,
    SHRateLimitWarning,
    SHRuntimeWarning,
    SHUserWarning,
    UndecodableAnswerError,
)
from .rate_limit import (
    RateLimiter,
    RateLimiterStats,
    forget_limiters,
    limiter_for,
    registered_limiter,
)
from .redaction import redact
from .request import DownloadRequest, MimeType, RequestType
from .response import DownloadResponse
from .result import DownloadResult, DownloadStatus
from .retry_after import parse_retry_after
from .sentinelhub_client import DownloadClient, SentinelHubDownloadClient
from .session import SentinelHubSession

__all__ = [
    "AuthenticationError",
    "AwsDownloadFailedException",
    "BadRequestError",
    "BaseSentinelHubException",
    "CacheCollisionError",
    "CacheWriteError",
    "DeadlineExceededError",
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
    "ImageDecodingError",
    "IncompleteAnswerError",
    "InvalidRequestError",
    "MimeType",
    "MissingDataInRequestException",
    "NotFoundError",
    "OutOfRequestsError",
    "OutOfRequestsException",
    "ProgressCallback",
    "RateLimiter",
    "RateLimiterStats",
    "RequestType",
    "RetryPolicy",
    "SHConfig",
    "SHDeprecationWarning",
    "SHRateLimitWarning",
    "SHRuntimeWarning",
    "SHUserWarning",
    "SentinelHubDownloadClient",
    "SentinelHubSession",
    "ServerError",
    "SharedLimitUnavailableError",
    "UndecodableAnswerError",
    "decode_data",
    "forget_limiters",
    "limiter_for",
    "parse_retry_after",
    "redact",
    "redact_headers",
    "registered_limiter",
]
