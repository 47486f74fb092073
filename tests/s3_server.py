"""moto's S3 server on 127.0.0.1, run as a process of its own: object storage for tests,
reached over HTTP by boto3, by GDAL (`/vsis3/`) and by any process they start."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3

from tests.conftest import free_port

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"
# How long the server may take to answer its first request, and to end once told to.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 server: its address, and the credentials it is reached with."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point boto3 (and rsgrpc) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def bucket(self, name: str) -> str:
        """Create the bucket `name`, a valid S3 bucket name (3 to 63 lowercase letters,
        digits, dots and hyphens); returns the name."""
        self.client().create_bucket(Bucket=name)
        return name


def _wait_until_answering(process: subprocess.Popen, endpoint: str) -> None:
    """Return once `endpoint` answers HTTP; fail if the process ends or the time is up."""
    # Straight to 127.0.0.1, whatever proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            opener.open(endpoint, timeout=0.5).close()
            return
        except urllib.error.HTTPError as error:
            error.close()
            return  # an answer, if not a success
        except OSError:
            pass  # not listening yet
        if process.poll() is not None:
            raise RuntimeError(f"moto's S3 server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"moto's S3 server did not answer at {endpoint} in time")
        time.sleep(0.1)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, once it answers; its buckets live as long
    as the server. Terminated and waited for at the end (killed if it does not end)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_until_answering(process, endpoint)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
