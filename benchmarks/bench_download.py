"""Download benchmark: rsgrpc.download against sentinelhub-py's client, same fake server, one run.

The fake Sentinel Hub deployment lives in ``tests/download/fake_sentinelhub.py`` (shared with the
tests) and runs in this process on 127.0.0.1; each client gets a fresh server so the counts are
its own.

(a) the server limits each client to 50 requests a second (a bucket of 10), 500 GeoTIFF
    requests: wall time against the ideal 500 / 50 s, and 429s received;
(b) no limit, 2000 small JSON answers each delayed 50 ms: throughput ratio.

Run: ``python benchmarks/bench_download.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "download"))

from download_helpers import deployment_for, process_request  # noqa: E402
from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, FakeSentinelHub  # noqa: E402
from harness import machine, timed_call  # noqa: E402

from rsgrpc.download import SentinelHubDownloadClient, forget_limiters  # noqa: E402

THREADS = 32


@dataclass
class Run:
    client: str
    requests: int
    seconds: float
    rate_limited: int
    connections: int
    failures: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def line(self) -> str:
        return (
            f"  {self.client:<14} {self.seconds:8.2f} s {self.per_second:9.1f} req/s "
            f"{self.rate_limited:6d} x429 {self.connections:6d} connections {self.failures:4d} failed"
        )


def run_ours(server_options: dict, count: int, kind: str, client_options: dict) -> Run:
    forget_limiters()
    SentinelHubDownloadClient.clear_cache()
    with FakeSentinelHub(**server_options) as hub:
        requests_ = [process_request(hub, f"r{i}", kind) for i in range(count)]
        deployment = deployment_for(hub, read_timeout_seconds=30.0, **client_options)
        with SentinelHubDownloadClient(deployment=deployment) as client:
            run = timed_call(client.download_results, requests_, max_threads=THREADS)
        failures = sum(not result.ok for result in run.value)
        return Run(
            "rsgrpc",
            count,
            run.seconds,
            hub.stats.rate_limited,
            hub.stats.connections_opened,
            failures,
        )


def run_sentinelhub(server_options: dict, count: int, kind: str) -> Run:
    from sentinelhub import DownloadRequest, MimeType, SHConfig
    from sentinelhub import SentinelHubDownloadClient as SHClient

    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    SHClient.clear_cache()
    with FakeSentinelHub(**server_options) as hub:
        config = SHConfig(
            sh_client_id=CLIENT_ID,
            sh_client_secret=CLIENT_SECRET,
            sh_base_url=hub.base_url,
            sh_token_url=hub.token_url,
            use_defaults=True,
        )
        data_type = MimeType.TIFF if kind == "tiff" else MimeType.JSON
        requests_ = [
            DownloadRequest(
                url=hub.process_url,
                request_type="POST",
                post_values={"id": f"r{i}", "format": kind},
                headers={"Content-Type": "application/json"},
                use_session=True,
                data_type=data_type,
            )
            for i in range(count)
        ]
        client = SHClient(config=config, raise_download_errors=False)
        run = timed_call(client.download, requests_, max_threads=THREADS)
        failures = sum(item is None for item in run.value)
        return Run(
            "sentinelhub-py",
            count,
            run.seconds,
            hub.stats.rate_limited,
            hub.stats.connections_opened,
            failures,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    import warnings

    warnings.simplefilter("ignore")
    print(f"machine: {machine()}")
    print(f"threads per client: {THREADS}")

    count_a = 500 // scale
    server_a = {"requests_per_second": 50, "burst": 10}
    ideal_a = count_a / 50
    print(
        f"\n(a) server limit 50 req/s (bucket 10), {count_a} GeoTIFF requests, ideal {ideal_a:.2f} s"
    )
    ours_a = run_ours(server_a, count_a, "tiff", {"requests_per_second": 50, "burst": 1})
    theirs_a = run_sentinelhub(server_a, count_a, "tiff")
    for run in (ours_a, theirs_a):
        print(run.line() + f"  {run.seconds / ideal_a:5.2f}x ideal")

    count_b = 2000 // scale
    server_b = {"latency": 0.05}
    print(f"\n(b) no limit, {count_b} small answers with 50 ms latency")
    ours_b = run_ours(server_b, count_b, "json", {})
    theirs_b = run_sentinelhub(server_b, count_b, "json")
    for run in (ours_b, theirs_b):
        print(run.line())
    print(f"  throughput rsgrpc / sentinelhub-py: {ours_b.per_second / theirs_b.per_second:.2f}x")

    print("\nsummary")
    print(
        f"  (a) rsgrpc {ours_a.seconds / ideal_a:.3f}x ideal (aim <= 1.1), {ours_a.rate_limited} x429 (aim 0)"
    )
    print(
        f"  (b) rsgrpc {ours_b.per_second / theirs_b.per_second:.2f}x sentinelhub-py throughput (aim >= 3)"
    )


if __name__ == "__main__":
    main()
