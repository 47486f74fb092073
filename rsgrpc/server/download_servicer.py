"""DownloadService: check a batch completely at the door, then download it as a session's operation."""

from __future__ import annotations

import asyncio
import threading
from typing import Final

from rsgrpc.download import (
    Deployment,
    DownloadClient,
    DownloadError,
    DownloadStatus,
    SentinelHubDownloadClient,
)
from rsgrpc.download.redaction import redact
from rsgrpc.engine import errors
from rsgrpc.engine.operations import Operation, OperationStore
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.session import Session, SessionRegistry
from rsgrpc.server.auth import Caller, current_caller
from rsgrpc.server.deployments import DownloadSettings
from rsgrpc.server.download_job import DownloadOutcome, run_download_batch
from rsgrpc.server.download_plan import StreamedBatch, plan_download
from rsgrpc.server.operation_servicer import answer_started, start_operation
from rsgrpc.server.status import download_error_status, reports_errors, to_status_proto
from rsgrpc.v1 import download_pb2, download_pb2_grpc

_STATUSES: Final = {
    DownloadStatus.SUCCEEDED: download_pb2.DownloadItemResult.STATUS_SUCCEEDED,
    DownloadStatus.FAILED: download_pb2.DownloadItemResult.STATUS_FAILED,
    DownloadStatus.CANCELLED: download_pb2.DownloadItemResult.STATUS_CANCELLED,
}


def outcome_to_proto(outcome: DownloadOutcome) -> download_pb2.DownloadItemResult:
    result = download_pb2.DownloadItemResult(
        status=_STATUSES[outcome.status],
        output_path=outcome.output_path,
        size_bytes=outcome.size_bytes,
        cache_hit=outcome.cache_hit,
        attempt_count=outcome.attempts,
    )
    if isinstance(outcome.error, DownloadError):
        result.error.CopyFrom(download_error_status(outcome.error))
    elif outcome.error is not None:
        result.error.CopyFrom(to_status_proto(outcome.error))
    if result.HasField("error"):
        # Whatever an upstream echoed into an error, no credential reaches the client.
        result.error.message = redact(result.error.message)
    return result


class DownloadServicer(download_pb2_grpc.DownloadServiceServicer):
    """Runs batches on the deployments of ``settings``.

    One download client per deployment (and per ``redownload``) keeps its connections open
    between batches; every client of a deployment shares that deployment's rate limiter and
    OAuth2 session, whichever session or thread uses it.
    """

    def __init__(
        self,
        registry: SessionRegistry,
        store: OperationStore,
        data_root: DataRoot,
        settings: DownloadSettings,
    ) -> None:
        self._registry = registry
        self._store = store
        self._data_root = data_root
        self._settings = settings
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, bool], DownloadClient] = {}

    def close(self) -> None:
        """Close every client's pooled connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _deployment(self, name: str) -> Deployment:
        if not name:
            raise errors.InvalidArgumentError("deployment is empty; name one of the server's")
        deployment = self._settings.deployments.get(name)
        if deployment is None:
            known = sorted(self._settings.deployments)
            raise errors.NotFoundError(
                f"deployment {name!r} is not configured on this server; "
                + (f"it has {known}" if known else "it has none (see rsgrpc serve --deployments)"),
                metadata={"deployment": name},
            )
        return deployment

    def _client(self, deployment: Deployment, redownload: bool) -> DownloadClient:
        key = (deployment.name, redownload)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                kind = SentinelHubDownloadClient if deployment.has_credentials else DownloadClient
                client = self._clients[key] = kind(
                    deployment=deployment,
                    redownload=redownload,
                    default_retry_time=deployment.default_retry_after_seconds,
                    cache_max_bytes=self._settings.cache_max_bytes,
                )
            return client

    @reports_errors
    async def Download(self, request, context):
        # Checking the batch resolves its outputs on disk: in a blocking thread.
        started = await asyncio.to_thread(self._download, request, current_caller())
        return await answer_started(started)

    @reports_errors
    async def StreamDownload(self, request_iterator, context):
        batch = StreamedBatch()
        async for message in request_iterator:
            batch.add(message)
        started = await asyncio.to_thread(self._download, batch.finished(), current_caller())
        return await answer_started(started)

    def _download(self, request, caller: Caller):
        session = self._registry.get(request.session, owner=caller.owner)
        deployment = self._deployment(request.deployment)
        planned = plan_download(request, deployment, self._data_root, self._settings.cache_dir)
        client = self._client(deployment, request.redownload)
        overwrite = request.overwrite
        # A batch may ask for fewer threads than its deployment's, not more.
        threads = client.thread_count(None, len(planned))
        if request.max_threads:
            threads = min(threads, request.max_threads)

        def run(session: Session, operation: Operation) -> download_pb2.DownloadResponse:
            outcomes = run_download_batch(
                client, planned, operation, session.logger, overwrite=overwrite, threads=threads
            )
            return download_pb2.DownloadResponse(results=[outcome_to_proto(o) for o in outcomes])

        return start_operation(self._store, session, "Download", run)
