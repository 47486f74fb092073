"""Server configuration: flags, with environment variables as their defaults."""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import psutil

from rsgrpc.engine.kernel_cache import default_kernel_cache_dir
from rsgrpc.engine.paths import default_root_name, named_root

MIB = 1 << 20


def _default_ram_mib() -> int:
    # Three quarters of the machine, leaving room for the OS and page cache.
    return int(psutil.virtual_memory().total * 3 // 4 // MIB)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `rsgrpc serve` can be told. Each field has a flag and an
    environment variable, `RSGRPC_<FIELD>` (e.g. RSGRPC_DATA_ROOT), but
    `other_data_roots` and `data_root_names`: the data roots past the first come from
    the same flag and variable as the first, and each root's name with it
    (`name=path`)."""

    address: str = "127.0.0.1:50051"
    # The primary: relative client paths resolve under it. A root is a folder, or a prefix
    # in S3-compatible object storage written `s3://bucket/prefix`.
    data_root: Path | str = Path("data")
    # Further roots, reached by absolute client paths: `--data-root` given again, or more
    # roots in RSGRPC_DATA_ROOT separated by os.pathsep. No flag of their own.
    other_data_roots: tuple[Path | str, ...] = ()
    # Each root's name, by which Dask workers map it to their own mount (`name=path` in
    # --data-root); empty, or "" for a root given without one: "data", "data2", ... by
    # its place (`DataRoot.at`).
    data_root_names: tuple[str, ...] = ()
    temp_root: Path = Path(tempfile.gettempdir()) / "rsgrpc"
    kernel_cache_dir: Path = default_kernel_cache_dir()  # compiled kernels (`rsgrpc warm`)
    max_processes: int = os.cpu_count() or 1
    max_ram_mib: int = 0  # 0: three quarters of the machine's memory
    max_sessions: int = 16
    max_operations: int = 32
    session_idle_timeout_s: float = 1800.0
    max_session_idle_timeout_s: float = 86400.0
    session_sweep_interval_s: float = 30.0
    # How long a closed session's log stays readable by its owner (ListLogEntries); 0: none.
    closed_session_log_s: float = 3600.0
    max_closed_session_logs: int = 64  # closed sessions' logs kept at most; oldest go first
    default_process_count: int = 0  # 0: max_processes
    default_ram_mib: int = 1024
    grace_period_s: float = 30.0
    max_message_mib: int = 16
    blocking_threads: int = 32  # threads for RPCs' blocking work: file headers, worker start/stop
    max_raster_pixels: int = 2_500_000_000  # largest raster a job reads or writes (width x height)
    max_output_mib: int = 65536  # largest output (uncompressed estimate) one job may write
    min_free_disk_mib: int = 256  # disk left free beside a job's outputs and temporary files
    max_waiters_per_session: int = 4096  # WatchOperation streams + WaitOperation calls at once
    reuse_port: bool = False  # share the port with other processes (SO_REUSEPORT)
    auth_token_file: str = ""  # lines of `NAME TOKEN`: clients send `authorization: Bearer TOKEN`
    admin_identities: str = ""  # comma-separated identities that see every session and operation
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set for mutual TLS
    dask_scheduler: str = ""  # e.g. tcp://scheduler:8786; local processes when empty
    deployments: str = ""  # a TOML or JSON file of download deployments (see README "Download")
    # Seconds between token probes of a download deployment that fetched no token meanwhile;
    # its health turns NOT_SERVING while its token endpoint fails (0: no probes).
    deployment_probe_s: float = 60.0
    # Prometheus metrics over HTTP at /metrics (see README "Metrics"); 0: none served.
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"  # the host the metrics port listens on (0.0.0.0: all)
    # OpenTelemetry spans over OTLP/gRPC (see README "Tracing"; needs the `tracing` extra).
    tracing: bool = False
    otlp_endpoint: str = ""  # empty: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317
    log_level: str = "INFO"
    log_format: str = "text"  # or json: a JSON object a line, with the request's id

    @property
    def data_roots(self) -> tuple[Path | str, ...]:
        """Every data root, the primary first."""
        return (self.data_root, *self.other_data_roots)

    @property
    def ram_total_mib(self) -> int:
        return self.max_ram_mib or _default_ram_mib()

    @property
    def process_count_default(self) -> int:
        return min(self.default_process_count or self.max_processes, self.max_processes)


_DATA_ROOT_ENV = "RSGRPC_DATA_ROOT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ServerConfig field, defaulting to its environment variable;
    `--data-root` may be repeated (`from_arguments` splits it into the data roots)."""
    defaults = ServerConfig()
    for field in fields(ServerConfig):
        if field.name == "data_root":
            parser.add_argument(
                "--data-root",
                action="append",
                default=None,
                help="a folder or s3://bucket/prefix, or name=folder to name it as Dask "
                "workers map it; repeat "
                f"for several roots, the first the primary (env {_DATA_ROOT_ENV}, several "
                f"separated by {os.pathsep!r}; default {defaults.data_root}, named "
                f"{default_root_name(1)!r})",
            )
            continue
        if field.name in ("other_data_roots", "data_root_names"):
            continue
        env = f"RSGRPC_{field.name.upper()}"
        default = os.environ.get(env, getattr(defaults, field.name))
        kind = type(getattr(defaults, field.name))
        parse = _boolean if kind is bool else kind
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=parse,
            default=parse(default) if isinstance(default, str) else default,
            help=f"(env {env}; default {getattr(defaults, field.name)})",
        )


def _boolean(text: str) -> bool:
    """A flag's or environment variable's yes or no."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def from_arguments(args: argparse.Namespace) -> ServerConfig:
    given_roots = args.data_root or _data_roots_from_environment()
    named = [named_root(text) for text in given_roots] or [("", ServerConfig.data_root)]
    names = [name for name, _ in named]
    roots = [root for _, root in named]
    given = {
        f.name: getattr(args, f.name)
        for f in fields(ServerConfig)
        if f.name not in ("data_root", "other_data_roots", "data_root_names")
    }
    return ServerConfig(
        **given,
        data_root=roots[0],
        other_data_roots=tuple(roots[1:]),
        data_root_names=tuple(names) if any(names) else (),
    )


def _data_roots_from_environment() -> list[str]:
    """The roots in RSGRPC_DATA_ROOT, separated by os.pathsep as in PATH; empty parts are
    skipped, and `s3://` is not split. A flag's value is never split: a folder's name may
    hold the separator."""
    text = os.environ.get(_DATA_ROOT_ENV, "")
    roots: list[str] = []
    for part in text.split(os.pathsep):
        if roots and part.startswith("//") and roots[-1].rpartition("=")[2] == "s3":
            roots[-1] += os.pathsep + part
        elif part:
            roots.append(part)
    return roots


def read_secret(path: str) -> str:
    """The stripped contents of a secret file; never logged."""
    return Path(path).read_text().strip()
