"""The `rsgrpc` command: serve, compile the kernels ahead, run a tool or a download with a
progress bar, check health.

The server's worker processes load this module as their main module (that is
how spawned processes start), so at the top it imports only the standard
library; each command imports the client or the server when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rsgrpc.client import Session
    from rsgrpc.v1 import operation_pb2


def _progress_bar(metadata: operation_pb2.OperationMetadata) -> None:
    from rsgrpc.v1 import operation_pb2

    stages = operation_pb2.OperationMetadata.Stage
    total = metadata.tiles_total or 1
    filled = int(30 * metadata.tiles_done / total)
    stage = stages.Name(metadata.stage).removeprefix("STAGE_").lower()
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (30 - filled)}] {metadata.tiles_done}/{metadata.tiles_total}"
        f" {stage:<10} {metadata.elapsed.ToNanoseconds() / 1e9:6.1f}s"
    )
    if metadata.stage == stages.STAGE_DONE:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _serve(args: argparse.Namespace) -> int:
    from rsgrpc.engine.log_context import configure_logging
    from rsgrpc.server.app import serve
    from rsgrpc.server.config import from_arguments

    config = from_arguments(args)
    try:
        configure_logging(config.log_level, config.log_format)
    except ValueError as exc:
        raise SystemExit(f"rsgrpc serve: {exc}") from None
    serve(config)
    return 0


def _warm(args: argparse.Namespace) -> int:
    """Compile every fixed kernel into the kernel cache (or load it, where already there)."""
    import time
    from collections import Counter

    from rsgrpc.engine.kernel_cache import use_kernel_cache_dir, write_manifest

    started = time.perf_counter()
    folder = use_kernel_cache_dir(args.kernel_cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # numba reads NUMBA_CACHE_DIR when it is first imported: here, after it is set.
    from rsgrpc_kernels.warm import fixed_kernels, warm_cases

    from rsgrpc.tools import RASTER_TOOLS, TABLE_TOOLS

    # Band calc and sieve, and the kernels each declared tool names.
    declared = (*RASTER_TOOLS, *TABLE_TOOLS)
    tools = {"band-calc", "sieve", *(name for tool in declared for name in tool.warm)}
    cases = [c for c in warm_cases(*tools) if not args.only or any(t in c.name for t in args.only)]
    if not cases:
        print(f"rsgrpc warm: no case matches {args.only}", file=sys.stderr)
        return 2
    kernels = fixed_kernels().values()

    def counts() -> Counter[str]:
        return Counter(
            compiled=sum(sum(k.stats.cache_misses.values()) for k in kernels),
            loaded=sum(sum(k.stats.cache_hits.values()) for k in kernels),
        )

    by_tool: dict[str, Counter[str]] = {}
    seconds: Counter[str] = Counter()
    for case in cases:
        before, began = counts(), time.perf_counter()
        case.run()
        seconds[case.tool] += time.perf_counter() - began
        tool = by_tool.setdefault(case.tool, Counter())
        tool.update(counts() - before)
        tool["cases"] += 1
    for name, tool in by_tool.items():
        print(
            f"{name:<10} {tool['cases']:4d} cases  {tool['compiled']:4d} kernels compiled "
            f"{tool['loaded']:4d} loaded  {seconds[name]:7.1f} s"
        )
    if not args.only:
        write_manifest(folder, len(cases))
    print(f"warmed {len(cases)} cases into {folder} in {time.perf_counter() - started:.1f} s")
    return 0


def _input(text: str) -> tuple[str, str, int]:
    """NAME=PATH or NAME=PATH:BAND."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[:BAND], got {text!r}")
    path, _, band = rest.rpartition(":") if rest.rpartition(":")[2].isdigit() else (rest, "", "1")
    return name, path, int(band)


def _band(text: str) -> tuple[str, int]:
    """PATH or PATH:BAND."""
    path, sep, band = text.rpartition(":")
    return (path, int(band)) if sep and band.isdigit() else (text, 1)


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[Session]:
    """A new session with the command's settings, closed with its channel on exit."""
    from rsgrpc.client import Session

    channel, token = _connect(args)
    try:
        with Session(
            n_processes=args.processes,
            available_ram=args.ram,
            operation_callback=None if args.quiet else _progress_bar,
            channel=channel,
            token=token,
        ) as session:
            yield session
    finally:
        channel.close()


def _failed(tool: str, result) -> int:
    print(f"{tool} failed: {result.grpc.code}: {result.grpc.message}", file=sys.stderr)
    return 1


def _band_calc(args: argparse.Namespace) -> int:
    names, paths, bands = zip(*args.input, strict=True) if args.input else ((), (), ())
    with _session(args) as session:
        result = session.band_calc(
            input_raster_list=paths,
            input_name_list=names,
            raster_bands=bands,
            expression_string=args.expression,
            output_path=args.output,
            output_nodata=args.nodata,
            output_datatype=args.dtype,
            calc_datatype=args.calc_datatype,
            overwrite=args.overwrite,
        )
    if not result.check:
        return _failed("band calc", result)
    _print_statistics(result.path, result.grpc.response.statistics)
    return 0


def _print_statistics(path: str, stats) -> None:
    """An output raster's path and the statistics of its valid pixels, on one line."""
    print(
        f"{path}: {stats.valid_pixel_count} valid pixels, "
        f"min {stats.minimum:g}, max {stats.maximum:g}, mean {stats.mean:g}"
    )


def _band_tool_common(args: argparse.Namespace) -> dict:
    """The arguments every band tool's command gives its method."""
    return {
        "input_bands": args.input,
        "output_path": args.output,
        "overwrite": args.overwrite,
        "prefix": args.prefix,
        "compression": args.compression,
    }


def _raster_path_common(args: argparse.Namespace) -> dict:
    """The arguments of a tool that takes one raster (`raster_path`, its band 1)."""
    if len(args.input) != 1 or args.input[0][1] != 1 or args.prefix:
        raise SystemExit(f"rsgrpc {args.command}: takes one --input (band 1) and no --prefix")
    return {
        "raster_path": args.input[0][0],
        "output_path": args.output,
        "overwrite": args.overwrite,
        "compression": args.compression,
    }


def _sieve(args: argparse.Namespace) -> int:
    with _session(args) as session:
        result = session.band_sieve(
            size=args.size, connected=args.connectivity == 8, **_band_tool_common(args)
        )
    if not result.check:
        return _failed(args.command, result)
    for output in result.grpc.response.outputs:
        print(
            f"{output.output_path}: {output.regions_changed} regions, "
            f"{output.pixels_changed} pixels changed"
        )
    return 0


def _spectral_distance(args: argparse.Namespace) -> int:
    with _session(args) as session:
        result = session.band_spectral_distance(
            input_bandsets=[args.first, args.second],
            output_path=args.output,
            algorithm_name=args.algorithm,
            nodata_value=args.nodata_value,
            threshold=args.threshold,
            overwrite=args.overwrite,
            compression=args.compression,
        )
    if not result.check:
        return _failed(args.command, result)
    _print_statistics(result.path, result.grpc.response.statistics)
    return 0


def _declared_tool(args: argparse.Namespace) -> int:
    """The command of a declared tool (`rsgrpc.tools`): its flags become the arguments of
    the client's method of the same name."""
    from rsgrpc.tools import raster_tool

    tool = raster_tool(args.tool)
    arguments = {flag.argument: getattr(args, flag.dest) for flag in tool.cli_flags}
    common = _raster_path_common(args) if tool.raster_path_input else _band_tool_common(args)
    with _session(args) as session:
        result = getattr(session, tool.name)(**common, **arguments)
    if not result.check:
        return _failed(args.command, result)
    for output in result.grpc.response.outputs:
        print(f"{output.output_path}: {output.pixels_changed} pixels changed")
    return 0


def _table_tool(args: argparse.Namespace) -> int:
    """The command of a declared table tool (`rsgrpc.tools.TABLE_TOOLS`): the file written,
    then the table's rows, tab-separated under their field names."""
    from rsgrpc.tools import table_tool

    tool = table_tool(args.tool)
    arguments = {flag.argument: getattr(args, flag.dest) for flag in tool.cli_flags}
    arguments[tool.input_argument] = args.input
    with _session(args) as session:
        arguments[tool.output_argument] = args.output
        result = getattr(session, tool.name)(**arguments)
    if not result.check:
        return _failed(args.command, result)
    response = result.grpc.response
    fields = [f.name for f in response.DESCRIPTOR.fields_by_name["rows"].message_type.fields]
    if getattr(response, "raster_path", ""):
        print(f"{response.raster_path}: raster")
    for path in getattr(response, "raster_paths", ()):
        print(f"{path}: raster")
    print(f"{response.output_path or 'no table file'}: {len(response.rows)} rows")
    print("\t".join(fields))
    for row in response.rows:
        print("\t".join(_table_cell(getattr(row, name)) for name in fields))
    return 0


def _table_cell(value: Any) -> str:
    """A row's field as the command prints it: floats to 10 digits, a repeated field's
    items joined by commas."""
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, str | int):
        return str(value)
    return ",".join(_table_cell(item) for item in value)


def _add_band_tool_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every band tool's command takes: a new session's, inputs and outputs."""
    _add_session_arguments(parser)
    parser.add_argument(
        "--input",
        action="append",
        type=_band,
        required=True,
        metavar="PATH[:BAND]",
        help="an input band, relative to the data root; repeat for several",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="a .tif file for one input, else a directory for one output per input",
    )
    parser.add_argument("--prefix", default="", help="output file name prefix in a directory")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--compression", choices=["none", "deflate", "zstd", "lzw"])


def _download_requests(path: str) -> list[dict]:
    """The JSON file of requests: a list of objects (see `rsgrpc.client.download_item`)."""
    try:
        with open(path, encoding="utf-8") as file:
            requests = json.load(file)
    except OSError as error:
        raise SystemExit(f"rsgrpc download: cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise SystemExit(f"rsgrpc download: {path} is not valid JSON: {error}") from None
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise SystemExit(f"rsgrpc download: {path} must hold a JSON list of request objects")
    return requests


def _download(args: argparse.Namespace) -> int:
    from google.rpc import code_pb2

    from rsgrpc.v1 import download_pb2

    requests = _download_requests(args.requests)
    with _session(args) as session:
        try:
            result = session.download(
                requests,
                deployment=args.deployment,
                overwrite=args.overwrite,
                redownload=args.redownload,
                max_threads=args.max_threads,
            )
        except ValueError as error:
            print(f"rsgrpc download: {args.requests}: {error}", file=sys.stderr)
            return 2
    if "results" not in result.extra:
        return _failed("download", result)
    succeeded = download_pb2.DownloadItemResult.STATUS_SUCCEEDED
    for item in result.extra["results"]:
        status = download_pb2.DownloadItemResult.Status.Name(item.status).removeprefix("STATUS_")
        if item.status == succeeded:
            source = "from the cache" if item.cache_hit else f"{item.attempt_count} attempts"
            print(f"{status} {item.output_path}: {item.size_bytes} bytes, {source}")
        else:
            code = code_pb2.Code.Name(item.error.code)
            print(f"{status} {item.output_path}: {code}: {item.error.message}")
    return 0 if result.check else 1


def _connect(args: argparse.Namespace):
    """A channel to `--target` as the connection flags say (TLS or plaintext), and the
    bearer token to send, or None."""
    from rsgrpc.client import connect

    credentials = _client_credentials(args, args.command)
    options = (
        [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    )
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as error:
            raise SystemExit(
                f"rsgrpc {args.command}: cannot read {args.token_file}: {error.strerror}"
            ) from None
    return connect(args.target, credentials=credentials, options=options), token


def _client_credentials(args: argparse.Namespace, command: str):
    """TLS credentials from the connection flags, or None for a plaintext channel."""
    import grpc

    if not (args.tls_ca_file or args.tls_cert_file or args.tls_key_file):
        return None
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise SystemExit(f"rsgrpc {command}: give --tls-cert-file and --tls-key-file together")
    contents = {}
    for flag in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(args, flag)
        try:
            contents[flag] = Path(path).read_bytes() if path else None
        except OSError as error:
            raise SystemExit(f"rsgrpc {command}: cannot read {path}: {error.strerror}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=contents["tls_ca_file"],
        private_key=contents["tls_key_file"],
        certificate_chain=contents["tls_cert_file"],
    )


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel, token = _connect(args)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service),
            timeout=args.timeout,
            metadata=metadata,
        )
    except grpc.RpcError as error:
        print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and how to reach it: TLS files and a token, each defaulting to its
    RSGRPC_CLIENT_* environment variable (so that a container's health check has them)."""
    parser.add_argument("--target", default="127.0.0.1:50051")
    for flag, text in (
        ("tls-ca-file", "PEM certificates that signed the server's; turns TLS on"),
        ("tls-cert-file", "PEM client certificate, for mutual TLS (with --tls-key-file)"),
        ("tls-key-file", "PEM private key of the client certificate"),
        ("tls-server-name", "the name the server's certificate holds, if not the target's host"),
        ("token-file", "file holding the bearer token to send"),
    ):
        env = f"RSGRPC_CLIENT_{flag.replace('-', '_').upper()}"
        parser.add_argument(
            f"--{flag}", default=os.environ.get(env, ""), help=f"{text} (env {env})"
        )


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    _add_connection_arguments(parser)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument(
        "--ram",
        type=int,
        default=None,
        help="available RAM in MB; under 1000 means GB, as in Remotior",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from rsgrpc.server.config import ServerConfig, add_arguments

    parser = argparse.ArgumentParser(prog="rsgrpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    add_arguments(serve)
    serve.set_defaults(run=_serve)

    warm = commands.add_parser(
        "warm", help="compile every kernel into the kernel cache, so no request waits for one"
    )
    warm.add_argument(
        "--kernel-cache-dir",
        type=Path,
        default=Path(os.environ.get("RSGRPC_KERNEL_CACHE_DIR") or ServerConfig.kernel_cache_dir),
        help="the server's --kernel-cache-dir (env RSGRPC_KERNEL_CACHE_DIR)",
    )
    warm.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="warm only the signatures whose name holds TEXT (e.g. 'sieve uint8'); repeatable",
    )
    warm.set_defaults(run=_warm)

    calc = commands.add_parser("band-calc", help="run band calc in a new session")
    _add_session_arguments(calc)
    calc.add_argument("--expression", required=True)
    calc.add_argument(
        "--input",
        action="append",
        type=_input,
        default=[],
        metavar="NAME=PATH[:BAND]",
        help="a named input, relative to the data root",
    )
    calc.add_argument("--output", required=True, help="output path, relative to the data root")
    calc.add_argument("--dtype", default="float32")
    calc.add_argument("--nodata", type=float, default=None)
    calc.add_argument(
        "--calc-datatype",
        default="float32",
        choices=("float32", "float64"),
        help="the type the calculation computes in (Remotior's calc_datatype)",
    )
    calc.add_argument("--overwrite", action="store_true")
    calc.set_defaults(run=_band_calc)

    sieve = commands.add_parser(
        "sieve",
        help="replace regions smaller than --size pixels by their largest neighbour, "
        "in a new session",
    )
    _add_band_tool_arguments(sieve)
    sieve.add_argument("--size", type=int, required=True)
    sieve.add_argument("--connectivity", type=int, choices=[4, 8], default=4)
    sieve.set_defaults(run=_sieve)

    from rsgrpc.tools import spectral_distance

    distance = commands.add_parser(
        spectral_distance.COMMAND, help=f"{spectral_distance.SUMMARY}, in a new session"
    )
    _add_session_arguments(distance)
    for which in ("first", "second"):
        distance.add_argument(
            f"--{which}",
            action="append",
            type=_band,
            required=True,
            metavar="PATH[:BAND]",
            help=f"a band of the {which} band set, relative to the data root; repeat in order",
        )
    distance.add_argument("--output", required=True, help="the output .tif")
    distance.add_argument("--algorithm", choices=["md", "sam"], default=None)
    distance.add_argument("--threshold", type=float, default=None, help="1 above, 0 elsewhere")
    distance.add_argument("--nodata-value", type=float, default=None)
    distance.add_argument("--overwrite", action="store_true")
    distance.add_argument("--compression", choices=["none", "deflate", "zstd", "lzw"])
    distance.set_defaults(run=_spectral_distance)

    from rsgrpc.tools import RASTER_TOOLS

    for tool in RASTER_TOOLS:
        command = commands.add_parser(tool.command, help=f"{tool.summary}, in a new session")
        _add_band_tool_arguments(command)
        for flag in tool.cli_flags:
            command.add_argument(flag.flag, **flag.options)
        command.set_defaults(run=_declared_tool, tool=tool.name)

    from rsgrpc.tools import TABLE_TOOLS

    for table in TABLE_TOOLS:
        command = commands.add_parser(table.command, help=f"{table.summary}, in a new session")
        _add_session_arguments(command)
        command.add_argument(
            "--input",
            action="append",
            type=_band,
            required=True,
            metavar="PATH[:BAND]",
            help="an input band, relative to the data root",
        )
        what = f"the {table.suffix} file"
        if table.raster is not None:
            what = f"the raster (.tif or .vrt), its table the {table.suffix} file beside it"
            if table.raster.paths is not None:
                what = "the rasters' base name (.tif or .vrt), each written beside it as "
                what += f"name_suffix, and the table as its {table.suffix} file"
        command.add_argument("--output", required=True, help=f"{what}, relative to the data root")
        for flag in table.cli_flags:
            command.add_argument(flag.flag, **flag.options)
        command.set_defaults(run=_table_tool, tool=table.name)

    download = commands.add_parser(
        "download", help="download a batch of requests in a new session, with a progress bar"
    )
    _add_session_arguments(download)
    download.add_argument(
        "--deployment", required=True, help="a deployment of the server's configuration"
    )
    download.add_argument(
        "--requests",
        required=True,
        metavar="FILE",
        help="a JSON list of requests, each with uri and output_path, and optionally method, "
        "headers, body and data_type",
    )
    download.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    download.add_argument(
        "--redownload", action="store_true", help="send every request, ignoring the server's cache"
    )
    download.add_argument(
        "--max-threads",
        type=int,
        default=None,
        metavar="N",
        help="download threads, at most the deployment's (default: the deployment's)",
    )
    # A download runs in threads on the server; one worker process is all its session needs.
    download.set_defaults(run=_download, processes=1)

    check = commands.add_parser("health", help="exit 0 if the server is SERVING")
    _add_connection_arguments(check)
    check.add_argument("--service", default="", help="a service name; empty for the server")
    check.add_argument("--timeout", type=float, default=5.0)
    check.set_defaults(run=_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
