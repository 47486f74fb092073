"""The deployment files under deploy/ without Docker or a cluster: their YAML lints clean, the
Kubernetes objects match Kubernetes' schemas, and every setting agrees with what it names.

Server flags are parsed by the server's own parser, with the image's environment (read from
the Dockerfile) as their defaults, as the container runs them; Dask flags by Dask's own
command line; probes name the services the server registers for health.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from distributed.cli.dask_scheduler import main as dask_scheduler_cli
from distributed.cli.dask_worker import main as dask_worker_cli
from yamllint import linter
from yamllint.config import YamlLintConfig

from rsgrpc.cli import build_parser
from rsgrpc.server.app import EXIT_MARGIN_S, RASTER_SERVICE, SERVICE_NAMES
from rsgrpc.server.config import ServerConfig, from_arguments
from rsgrpc.server.deployments import load_download_settings
from tests.test_dockerfile import _env, _stages

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
DASK_OPERATOR_API = "kubernetes.dask.org/v1"
MIB = 1 << 20
# Headroom of the server's container beyond the sessions' RAM it budgets (--max-ram-mib):
# the interpreter, gRPC, GDAL's cache and the server's own state.
SERVER_OWN_MIB = 512
# The oldest Kubernetes with gRPC probes generally available.
OLDEST_KUBERNETES = (1, 27)


def _load(path: Path) -> dict[str, Any]:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 1, f"{path.name} should hold one document"
    return documents[0]


# ---------------------------------------------------------------------------------------------
# The image, and the server as the image runs it


@pytest.fixture(scope="module")
def dockerfile_stages():
    return _stages((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def image_env(dockerfile_stages) -> dict[str, str]:
    return _env(dockerfile_stages[-1])


@pytest.fixture
def server_config(image_env, monkeypatch):
    """The ServerConfig of `rsgrpc <args>` in a container of the image, with `environment`."""

    def parse(args: list[str], environment: dict[str, str] | None = None) -> ServerConfig:
        for key in [key for key in os.environ if key.startswith("RSGRPC_")]:
            monkeypatch.delenv(key)
        for key, value in {**image_env, **(environment or {})}.items():
            if key.startswith("RSGRPC_"):
                monkeypatch.setenv(key, value)
        assert args[:1] == ["serve"], f"the server's container should run `serve`: {args}"
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"`rsgrpc serve` does not accept {args[1:]}")
        return from_arguments(parsed)

    return parse


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _dask_options(cli: Any, command: str, args: list[str]) -> dict[str, Any]:
    """The options of `dask <command> <args>` as Dask's command line parses them (an unknown
    option fails)."""
    return cli.make_context(f"dask {command}", list(args)).params


def test_the_image_installs_the_dask_extra(dockerfile_stages, image_env):
    extras: set[str] = set()
    for args in dockerfile_stages[0].all("RUN"):
        words = shlex.split(args)
        if "pip" in words and "install" in words:
            for word in words:
                found = re.fullmatch(r"\.\[([\w,-]+)\]", word)
                if found:
                    extras |= set(found[1].split(","))
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert "dask" in extras, f"the build installs the extras {sorted(extras)}, not dask"
    assert extras <= set(optional), f"unknown extras {sorted(extras - set(optional))}"
    assert any(requirement.startswith("distributed") for requirement in optional["dask"])
    # `dask worker` in the image loads the kernels `rsgrpc warm` compiled.
    assert image_env["NUMBA_CACHE_DIR"] == image_env["RSGRPC_KERNEL_CACHE_DIR"]
    # ... and runs no profiler of its own (benchmarks/bench_dask.py starts its workers so).
    assert image_env["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] == "False"


# ---------------------------------------------------------------------------------------------
# YAML


def test_yamllint_is_clean():
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    files = sorted(
        path
        for path in DEPLOY.rglob("*")
        if path.is_file()
        and config.is_yaml_file(str(path))
        and not config.is_file_ignored(str(path))
    )
    linted = {path.relative_to(DEPLOY).as_posix() for path in files}
    kubernetes = {f"kubernetes/{name}" for name in _kustomization()["resources"]}
    assert {"compose.yaml", "kubernetes/kustomization.yaml", *kubernetes} <= linted
    problems = [
        f"{path.relative_to(REPO)}:{problem.line}:{problem.column}: {problem.desc} ({problem.rule})"
        for path in files
        for problem in linter.run(path.read_text(), config, str(path))
    ]
    assert problems == []
    # The configuration still finds what yamllint's default one does.
    assert [problem.rule for problem in linter.run("a: 1\na: 2\n", config)] == ["key-duplicates"]


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _kustomization() -> dict[str, Any]:
    return _load(KUBERNETES / "kustomization.yaml")


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """The objects of the kustomization, by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for name in _kustomization()["resources"]:
        document = _load(KUBERNETES / name)
        assert document["kind"] not in found, f"two {document['kind']} objects"
        found[document["kind"]] = document
    assert set(found) == {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "DaskCluster",
    }
    return found


def _server_pod(manifests) -> dict[str, Any]:
    return manifests["Deployment"]["spec"]["template"]["spec"]


def _scheduler_pod(manifests) -> dict[str, Any]:
    return manifests["DaskCluster"]["spec"]["scheduler"]["spec"]


def _worker_pod(manifests) -> dict[str, Any]:
    return manifests["DaskCluster"]["spec"]["worker"]["spec"]


def _pods(manifests) -> dict[str, dict[str, Any]]:
    return {
        "server": _server_pod(manifests),
        "scheduler": _scheduler_pod(manifests),
        "worker": _worker_pod(manifests),
    }


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _main(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return container


def _container_port(container: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    assert name in ports, f"{container['name']} has no port named {name}"
    return ports[name]


def _bytes(quantity: str | int) -> int:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    assert found, f"not a memory quantity: {quantity}"
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    units |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(float(found[1]) * units.get(found[2] or "", 1))


def _cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _schema_versions() -> list[str]:
    available = sorted(
        set(kubernetes_validate.utils.all_versions()),
        key=lambda version: tuple(int(part) for part in version.split(".")),
    )
    supported = [v for v in available if tuple(map(int, v.split(".")[:2])) >= OLDEST_KUBERNETES]
    assert supported, f"kubernetes-validate has no schemas from {OLDEST_KUBERNETES} on"
    return sorted({supported[0], supported[-1]})


def _validate(document: dict[str, Any], version: str, what: str) -> None:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(part) for part in error.path)
        pytest.fail(
            f"{what} is not a valid {document['kind']} for {version}: {where}: {error.message}"
        )


@pytest.mark.parametrize("version", _schema_versions())
def test_kubernetes_objects_match_their_schemas(manifests, version):
    for kind, document in manifests.items():
        if document["apiVersion"] == DASK_OPERATOR_API:
            # The operator's definition takes any spec; its parts are Kubernetes' own types.
            spec = document["spec"]
            for part, wrapped in (
                ("scheduler pod", _wrap("Pod", spec["scheduler"]["spec"])),
                ("scheduler service", _wrap("Service", spec["scheduler"]["service"])),
                ("worker pod", _wrap("Pod", spec["worker"]["spec"])),
            ):
                _validate(wrapped, version, f"the DaskCluster's {part}")
        else:
            _validate(document, version, kind)


def _wrap(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "part"}, "spec": spec}


def test_the_dask_cluster_is_a_resource_of_the_dask_operator(manifests):
    cluster = manifests["DaskCluster"]
    assert cluster["apiVersion"] == DASK_OPERATOR_API
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    # What the operator's resource definition requires.
    assert {"scheduler", "worker"} <= set(spec)
    assert {"spec", "service"} <= set(spec["scheduler"])
    assert "spec" in spec["worker"]
    assert isinstance(spec["worker"].get("replicas"), int) and spec["worker"]["replicas"] >= 1
    # The operator finds the scheduler's pod by these labels, and gives the workers the
    # address of the service port named tcp-comm.
    service = spec["scheduler"]["service"]
    assert service["selector"] == {
        "dask.org/cluster-name": name,
        "dask.org/component": "scheduler",
    }
    scheduler = _main(_scheduler_pod(manifests))
    assert scheduler["command"] == ["dask"] and scheduler["args"][0] == "scheduler"
    options = _dask_options(dask_scheduler_cli, "scheduler", scheduler["args"][1:])
    targets = {port["name"]: port["targetPort"] for port in service["ports"]}
    assert targets["tcp-comm"] == "tcp-comm"
    assert _container_port(scheduler, "tcp-comm") == int(options["port"])
    assert _container_port(scheduler, "http-dashboard") == _port(options["dashboard_address"])
    worker = _main(_worker_pod(manifests))
    assert worker["command"] == ["dask"] and worker["args"][0] == "worker"
    options = _dask_options(dask_worker_cli, "worker", worker["args"][1:])
    # No address: the operator's DASK_SCHEDULER_ADDRESS gives it.
    assert options["scheduler"] is None
    assert _container_port(worker, "http-dashboard") == _port(options["dashboard_address"])
    # Both answer /health on their HTTP port.
    for container in (scheduler, worker):
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"port": "http-dashboard", "path": "/health"}


def _worker_slots(args: list[str], replicas: int) -> int:
    options = _dask_options(dask_worker_cli, "worker", args)
    assert options["n_workers"] in (None, 1, "1"), "one worker process per container"
    return replicas * options["nthreads"]


def test_the_server_runs_its_tiles_on_the_dask_cluster(manifests, server_config):
    server = _main(_server_pod(manifests))
    config = server_config(server["args"], _environment(server))
    cluster = manifests["DaskCluster"]
    service = cluster["spec"]["scheduler"]["service"]
    comm = {port["name"]: port["port"] for port in service["ports"]}["tcp-comm"]
    assert config.dask_scheduler == f"tcp://{cluster['metadata']['name']}-scheduler:{comm}"
    # The server's processes are the cluster's slots, and the sessions' RAM it budgets
    # fits in the workers together.
    replicas = cluster["spec"]["worker"]["replicas"]
    worker = _main(_worker_pod(manifests))
    assert _worker_slots(worker["args"][1:], replicas) == config.max_processes
    worker_bytes = _bytes(worker["resources"]["limits"]["memory"])
    assert replicas * worker_bytes >= config.max_ram_mib * MIB


def _environment(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_containers_have_the_resources_the_server_is_told(manifests, server_config):
    for pod in _pods(manifests).values():
        for container in _containers(pod):
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                requested, limit = resources["requests"][kind], resources["limits"][kind]
                measure = _cores if kind == "cpu" else _bytes
                assert measure(requested) <= measure(limit), (container["name"], kind)
    server = _main(_server_pod(manifests))
    config = server_config(server["args"], _environment(server))
    limits = server["resources"]["limits"]
    # Totals given, not read from the machine: a container sees the node's.
    assert "--max-processes" in server["args"] and "--max-ram-mib" in server["args"]
    assert _bytes(limits["memory"]) >= (config.max_ram_mib + SERVER_OWN_MIB) * MIB
    assert _cores(limits["cpu"]) >= config.max_processes


def test_probes_ask_the_services_the_server_registers(manifests, server_config):
    server = _main(_server_pod(manifests))
    config = server_config(server["args"], _environment(server))
    port = _port(config.address)
    assert config.address == f"0.0.0.0:{port}"
    assert _container_port(server, "grpc") == port
    assert RASTER_SERVICE in SERVICE_NAMES
    assert server["readinessProbe"]["grpc"] == {"port": port, "service": RASTER_SERVICE}
    for probe in ("livenessProbe", "startupProbe"):
        # The server as a whole: "" (also the default).
        assert server[probe]["grpc"].get("service", "") == "", probe
        assert server[probe]["grpc"]["port"] == port, probe
    pod = _server_pod(manifests)
    assert pod["terminationGracePeriodSeconds"] >= config.grace_period_s + EXIT_MARGIN_S


def test_the_service_reaches_the_server(manifests, server_config):
    deployment, service = manifests["Deployment"], manifests["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    server = _main(_server_pod(manifests))
    config = server_config(server["args"], _environment(server))
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert set(ports) == {"grpc", "metrics"}
    for name, port in ports.items():
        assert port["targetPort"] == name
        _container_port(server, name)
    assert _container_port(server, "metrics") == config.metrics_port > 0
    assert config.metrics_address == "0.0.0.0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.metrics_port


def test_pods_run_as_the_image_user_on_a_read_only_root(manifests, dockerfile_stages):
    uid = int(dockerfile_stages[-1].last("USER").split(":")[0])
    images = {image["name"] for image in _kustomization()["images"]}
    for name, pod in _pods(manifests).items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, name
        assert pod["automountServiceAccountToken"] is False, name
        # Service links would put <SERVICE>_PORT=tcp://... variables in the environment,
        # where rsgrpc reads RSGRPC_* and Dask DASK_* settings.
        assert pod["enableServiceLinks"] is False, name
        for container in _containers(pod):
            # One image, the one the kustomization sets.
            assert container["image"] in images, (name, container["name"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, container["name"])


def _mount(container: dict[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The volume mount that holds `path` in `container`, if any."""
    path = Path(path)
    holding = [
        mount
        for mount in container.get("volumeMounts", [])
        if path == Path(mount["mountPath"]) or path.is_relative_to(mount["mountPath"])
    ]
    return max(holding, key=lambda mount: len(mount["mountPath"]), default=None)


def _writable(container: dict[str, Any], path: str | Path) -> bool:
    mount = _mount(container, path)
    return mount is not None and not mount.get("readOnly", False)


def test_what_each_process_writes_is_on_a_writable_volume(manifests, server_config, image_env):
    server = _main(_server_pod(manifests))
    config = server_config(server["args"], _environment(server))
    for path in (
        config.data_root,
        config.temp_root,
        config.kernel_cache_dir,  # numba opens its cache for writing even to load from it
        image_env["XDG_CACHE_HOME"],  # the download cache
    ):
        assert _writable(server, path), f"the server writes to {path}, on a read-only root"
    worker = _main(_worker_pod(manifests))
    # Dask's local directory (the temporary folder) and numba's cache.
    for path in ("/tmp", image_env["NUMBA_CACHE_DIR"]):
        assert _writable(worker, path), f"a Dask worker writes to {path}, on a read-only root"
    assert _writable(_main(_scheduler_pod(manifests)), "/tmp")
    # The kernels `rsgrpc warm` put in the image are copied into the volume mounted over them.
    for name, pod in _pods(manifests).items():
        main = _main(pod)
        for init in pod.get("initContainers", []):
            (mount,) = init["volumeMounts"]
            over = [m for m in main["volumeMounts"] if m["name"] == mount["name"]]
            assert len(over) == 1, (name, init["name"])
            # The image's folder under that path, copied whole into the volume's root (which
            # belongs to root: `cp -a <path>/. <volume>` fails to set its times).
            cp, recursive, source, target = init["command"]
            assert (cp, recursive, target) == ("cp", "-R", f"{mount['mountPath']}/")
            assert Path(source).parent == Path(over[0]["mountPath"]), (name, init["name"])
            kernels = Path(image_env["RSGRPC_KERNEL_CACHE_DIR"])
            assert kernels.is_relative_to(source), (name, init["name"])


def test_server_and_workers_share_the_data_root_at_one_path(manifests, server_config):
    server = _main(_server_pod(manifests))
    config = server_config(server["args"], _environment(server))
    claim = manifests["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    claims = {}
    for name, pod in (("server", _server_pod(manifests)), ("worker", _worker_pod(manifests))):
        mount = _mount(_main(pod), config.data_root)
        assert mount is not None and Path(mount["mountPath"]) == config.data_root, name
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claims[name] = volume["persistentVolumeClaim"]["claimName"]
    assert claims == {"server": claim["metadata"]["name"], "worker": claim["metadata"]["name"]}
    assert _writable(server, config.data_root)
    # Workers read; the server writes every output.
    assert not _writable(_main(_worker_pod(manifests)), config.data_root)


def test_the_kustomization_lists_every_manifest():
    kustomization = _kustomization()
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_kustomize_builds_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its kustomize) is not installed")
    built = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    documents = list(yaml.safe_load_all(built.stdout))
    assert sorted(d["kind"] for d in documents) == sorted(
        ["Deployment", "Service", "PersistentVolumeClaim", "DaskCluster"]
    )
    # The image setting reaches every container, the DaskCluster's too.
    (image,) = _kustomization()["images"]
    wanted = f"{image['newName']}:{image['newTag']}"
    for document in documents:
        if document["kind"] == "Deployment":
            pods = [document["spec"]["template"]["spec"]]
        elif document["kind"] == "DaskCluster":
            pods = [document["spec"]["scheduler"]["spec"], document["spec"]["worker"]["spec"]]
        else:
            continue
        for pod in pods:
            assert {c["image"] for c in _containers(pod)} == {wanted}


# ---------------------------------------------------------------------------------------------
# Compose


def _interpolate(value: Any) -> Any:
    """Compose's variable interpolation in every string, with no variable set:
    `${NAME:-default}` and `${NAME-default}` give the default, `${NAME}` nothing, `$$` a `$`."""
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if isinstance(value, str):
        value = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda found: found[1] or "", value)
        return value.replace("$$", "$")
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(_load(COMPOSE))


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(amount) * units[unit] for amount, unit in parts)


def _compose_bytes(size: str) -> int:
    found = re.fullmatch(r"(\d+)([bkmg]?)", str(size).lower())
    assert found, size
    return int(found[1]) * {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[found[2]]


def _published(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> host address:port."""
    published = {}
    for port in service.get("ports", []):
        host, _, container = str(port).rpartition(":")
        published[int(container)] = host
    return published


def _named_volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Mount path -> (source, read-only)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


def test_compose_runs_the_image_the_dockerfile_builds(compose):
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "rsgrpc", "redis", "minio"}
    ours = {name: services[name] for name in ("scheduler", "worker", "rsgrpc")}
    assert len({service["image"] for service in ours.values()}) == 1
    for name, service in ours.items():
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO, name
        assert (context / build["dockerfile"]).is_file(), name
        assert "profiles" not in service, name
    assert services["redis"]["profiles"] == ["downloads"]
    assert services["minio"]["profiles"] == ["s3"]


def test_compose_server_uses_the_cluster_of_the_compose_file(compose, server_config):
    services = compose["services"]
    server = services["rsgrpc"]
    config = server_config(server["command"], server.get("environment"))
    scheduler = services["scheduler"]
    assert scheduler["entrypoint"] == ["dask"] and scheduler["command"][0] == "scheduler"
    options = _dask_options(dask_scheduler_cli, "scheduler", scheduler["command"][1:])
    assert config.dask_scheduler == f"tcp://scheduler:{options['port']}"
    worker = services["worker"]
    assert worker["entrypoint"] == ["dask"] and worker["command"][0] == "worker"
    args = worker["command"][1:]
    assert _dask_options(dask_worker_cli, "worker", args)["scheduler"] == (config.dask_scheduler)
    replicas = worker["deploy"]["replicas"]
    assert replicas == 2
    assert _worker_slots(args, replicas) == config.max_processes
    assert replicas * _compose_bytes(worker["mem_limit"]) >= config.max_ram_mib * MIB
    assert server["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert worker["depends_on"]["scheduler"]["condition"] == "service_healthy"


def test_compose_server_and_workers_share_the_data_root_at_one_path(compose, server_config):
    services = compose["services"]
    server = services["rsgrpc"]
    config = server_config(server["command"], server.get("environment"))
    root = str(config.data_root)
    server_source, server_read_only = _named_volumes(server)[root]
    worker_source, worker_read_only = _named_volumes(services["worker"])[root]
    assert server_source == worker_source and server_source in compose["volumes"]
    assert not server_read_only and worker_read_only


def test_compose_ports_and_health_checks_match_the_server(compose, server_config):
    services = compose["services"]
    server = services["rsgrpc"]
    config = server_config(server["command"], server.get("environment"))
    port = _port(config.address)
    published = _published(server)
    assert set(published) == {port, config.metrics_port}
    # Neither has authentication here: published on the host's loopback only.
    assert all(host.startswith("127.0.0.1:") for host in published.values())
    assert config.metrics_address == "0.0.0.0"
    test = server["healthcheck"]["test"]
    assert test[:2] == ["CMD", "rsgrpc"]
    health = build_parser().parse_args(test[2:])
    assert health.command == "health"
    assert health.target == f"127.0.0.1:{port}"
    assert health.service in ("", *SERVICE_NAMES)
    assert _seconds(server["stop_grace_period"]) >= config.grace_period_s + EXIT_MARGIN_S
    # The Dask processes answer /health on their HTTP port (the image's own check asks
    # for an rsgrpc server).
    for name, cli in (("scheduler", dask_scheduler_cli), ("worker", dask_worker_cli)):
        service = services[name]
        options = _dask_options(cli, name, service["command"][1:])
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        (url,) = re.findall(r"'(http://[^']+)'", test[3])
        parts = urllib.parse.urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == (
            "127.0.0.1",
            _port(options["dashboard_address"]),
            "/health",
        ), name


def test_compose_download_deployments_load(compose, server_config, tmp_path, monkeypatch):
    services = compose["services"]
    server = services["rsgrpc"]
    environment = server["environment"]
    # Off unless asked for.
    assert server_config(server["command"], environment).deployments == ""
    mounts = {target: source for target, (source, _) in _named_volumes(server).items()}
    (target,) = [t for t, source in mounts.items() if source == "./deployments.toml"]
    file = DEPLOY / "deployments.toml"
    assert file.is_file() and target.endswith(".toml")
    document = tomllib.loads(file.read_text())
    named = {
        value
        for deployment in document["deployments"].values()
        for key, value in deployment.items()
        if key.endswith("_env")
    }
    assert named <= set(environment), f"the server's environment lacks {named - set(environment)}"
    # As the server reads it once RSGRPC_DEPLOYMENTS names it and the secrets are given.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    given = {key: value or "secret" for key, value in environment.items()}
    settings = load_download_settings(file, environ=given)
    assert set(settings.deployments) == set(document["deployments"])
    # The shared rate limit is kept in the Redis of the `downloads` profile.
    limit = urllib.parse.urlsplit(
        environment[document["deployments"]["sentinel-hub"]["shared_limit_url_env"]]
    )
    assert (limit.scheme, limit.hostname, limit.port) == ("redis", "redis", 6379)
    assert services["redis"]["command"][0] == "redis-server"
    # The MinIO of the `s3` profile, over HTTP.
    minio = urllib.parse.urlsplit(document["deployments"]["minio"]["base_url"])
    assert minio.hostname == "minio"
    assert services["minio"]["command"][:2] == ["server", "/data"]
    assert minio.port in _published(services["minio"])
