"""Download deployments as server configuration: a TOML or JSON file, secrets from it or the environment.

A file names each deployment a client may use, and where the server caches answers::

    cache_dir = "/var/cache/rsgrpc/download"   # optional; relative to this file
                                               # (default ~/.cache/rsgrpc/download)
    cache_max_bytes = 10_000_000_000           # optional: least recently used answers
                                               # are evicted beyond this

    [deployments.sentinel-hub]
    base_url = "https://services.sentinel-hub.com"
    token_url = "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
    client_id = "my-client-id"
    client_secret_env = "SH_CLIENT_SECRET"    # or client_secret = "..." in this file
    requests_per_second = 5.0
    burst = 5
    retry_after_unit = "auto"                 # or "milliseconds" / "seconds" to force it
    default_retry_after_seconds = 30.0        # a 429 without Retry-After pauses this long
    token_retry_budget_seconds = 90.0         # how long a token endpoint outage is ridden out
    max_threads = 32                          # download threads per batch
                                              # (default min(32, cores + 4))
    pool_connections = 32                     # keep-alive connections kept (default: threads)
    max_concurrent_requests = 32              # requests in flight at once, all batches
    shared_limit_dir = "/run/rsgrpc/limits"   # optional; relative to this file: the rate
                                              # and 429 pauses are shared with every process
                                              # on the host naming this deployment and folder
    # Or, instead of shared_limit_dir, a Redis sharing them with every host of a fleet
    # (redis://user:password@host:6379/0, rediss://... or unix:///path/to/socket):
    # shared_limit_url_env = "RSGRPC_LIMIT_URL" # or shared_limit_url = "..." in this file

    [deployments.sentinel-hub.retry]
    max_attempts = 4

A deployment without credentials is fetched without an ``Authorization`` header. Secrets
(the client secret, the password of a ``shared_limit_url``) are never logged nor put in an
error message. A ``shared_limit_url`` needs the redis client (``pip install
'rsgrpc[redis]'``), checked when the file is read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rsgrpc.download import Deployment, RetryPolicy

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# The settings of a deployment a file may give, with the type each must have.
_DEPLOYMENT_FIELDS: Final[Mapping[str, type]] = {
    "base_url": str,
    "token_url": str,
    "client_id": str,
    "client_secret": str,
    "client_secret_env": str,
    "requests_per_second": float,
    "burst": int,
    "processing_units_per_second": float,
    "processing_units_burst": float,
    "max_concurrent_requests": int,
    "max_threads": int,
    "pool_connections": int,
    "shared_limit_dir": str,
    "shared_limit_url": str,
    "shared_limit_url_env": str,
    "retry_after_unit": str,
    "max_retry_after_seconds": float,
    "default_retry_after_seconds": float,
    "token_retry_budget_seconds": float,
    "token_backoff_max_seconds": float,
    "connect_timeout_seconds": float,
    "read_timeout_seconds": float,
    "token_timeout_seconds": float,
    "refresh_before_expiry_seconds": float,
    "retry": dict,
}
_RETRY_FIELDS: Final[Mapping[str, type]] = {
    "max_attempts": int,
    "backoff_base_seconds": float,
    "backoff_max_seconds": float,
    "max_rate_limit_retries": int,
}
_TOP_LEVEL: Final = frozenset({"cache_dir", "cache_max_bytes", "deployments"})


class DeploymentConfigError(ValueError):
    """Raised when the deployments file cannot be read or says something invalid."""


@dataclass(frozen=True)
class DownloadSettings:
    """The deployments clients may name, the folder holding the server's download cache, and
    the size that folder is kept under (None: no cap)."""

    deployments: Mapping[str, Deployment]
    cache_dir: Path
    cache_max_bytes: int | None = None


def default_cache_dir() -> Path:
    """The user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``) + ``rsgrpc/download``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rsgrpc" / "download"


def load_download_settings(
    path: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> DownloadSettings:
    """Read the deployments file at ``path`` (``.json`` is JSON, anything else TOML).

    Without a path there are no deployments. ``environ`` (default ``os.environ``) supplies
    the secrets named by ``client_secret_env``. The cache folder is created only when there
    are deployments to fill it. Raises `DeploymentConfigError`.
    """
    environ = os.environ if environ is None else environ
    if not path:
        return DownloadSettings({}, default_cache_dir())
    file = Path(path).expanduser()
    document = _read(file)
    where = str(file)
    unknown = sorted(set(document) - _TOP_LEVEL)
    if unknown:
        raise DeploymentConfigError(
            f"{where}: unknown settings {unknown}; expected {sorted(_TOP_LEVEL)}"
        )
    cache_dir = default_cache_dir()
    if "cache_dir" in document:
        given = document["cache_dir"]
        if not isinstance(given, str) or not given:
            raise DeploymentConfigError(f"{where}: cache_dir must be a non-empty string")
        cache_dir = file.parent / Path(given).expanduser()
    cache_max_bytes = document.get("cache_max_bytes")
    if cache_max_bytes is not None and (
        isinstance(cache_max_bytes, bool)
        or not isinstance(cache_max_bytes, int)
        or cache_max_bytes < 1
    ):
        raise DeploymentConfigError(
            f"{where}: cache_max_bytes must be a whole number of bytes, 1 or more"
        )
    sections = document.get("deployments", {})
    if not isinstance(sections, dict):
        raise DeploymentConfigError(f"{where}: deployments must be a table of named deployments")
    deployments = {
        name: _deployment(name, values, f"{where}: deployment {name!r}", environ, file.parent)
        for name, values in sections.items()
    }
    if not deployments:
        return DownloadSettings({}, cache_dir, cache_max_bytes)
    return DownloadSettings(
        deployments, _make_dir(cache_dir, f"{where}: cache_dir"), cache_max_bytes
    )


def _read(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise DeploymentConfigError(
            f"cannot read the deployments file {file}: {error.strerror}"
        ) from None
    try:
        document = json.loads(text) if file.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, RecursionError) as error:
        # Parser messages give a position, never the text around it.
        raise DeploymentConfigError(f"{file} is not valid: {error}") from None
    if not isinstance(document, dict):
        raise DeploymentConfigError(f"{file} must hold a table (an object) at the top")
    return document


def _make_dir(folder: Path, what: str) -> Path:
    resolved = folder.expanduser().resolve()
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DeploymentConfigError(
            f"{what} {resolved} cannot be created: {error.strerror}"
        ) from None
    return resolved


def _deployment(
    name: str, values: Any, where: str, environ: Mapping[str, str], base_dir: Path
) -> Deployment:
    if not _NAME.match(name):
        raise DeploymentConfigError(
            f"{where}: a name has 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(values, dict):
        raise DeploymentConfigError(f"{where} must be a table of settings")
    settings = _typed(values, _DEPLOYMENT_FIELDS, where)
    retry_values = settings.pop("retry", {})
    retry = _typed(retry_values, _RETRY_FIELDS, f"{where} retry")
    if "base_url" not in settings:
        raise DeploymentConfigError(f"{where}: base_url is required")
    settings["base_url"] = _check_url(settings["base_url"], f"{where}: base_url", base=True)
    if "shared_limit_dir" in settings:
        given = settings["shared_limit_dir"]
        if not given:
            raise DeploymentConfigError(f"{where}: shared_limit_dir must be a non-empty string")
        folder = _make_dir(base_dir / Path(given).expanduser(), f"{where}: shared_limit_dir")
        settings["shared_limit_dir"] = str(folder)
    for setting in ("client_secret", "shared_limit_url"):
        _from_environment(settings, setting, environ, where)
    if "shared_limit_url" in settings:
        if "shared_limit_dir" in settings:
            raise DeploymentConfigError(
                f"{where}: give shared_limit_dir or shared_limit_url, not both"
            )
        if importlib.util.find_spec("redis") is None:
            raise DeploymentConfigError(
                f"{where}: shared_limit_url needs the redis client: pip install 'rsgrpc[redis]'"
            )
    has_id, has_secret = bool(settings.get("client_id")), bool(settings.get("client_secret"))
    if has_id != has_secret:
        raise DeploymentConfigError(
            f"{where}: credentials need both client_id and a client secret, or neither"
        )
    if has_id:
        if "token_url" not in settings:
            raise DeploymentConfigError(f"{where}: token_url is required with credentials")
        settings["token_url"] = _check_url(settings["token_url"], f"{where}: token_url")
    try:
        return Deployment(name=name, retry=RetryPolicy(**retry), **settings)
    except ValueError as error:
        # Deployment's messages name settings and numbers, never the secret.
        raise DeploymentConfigError(f"{where}: {error}") from None


def _from_environment(
    settings: dict[str, Any], setting: str, environ: Mapping[str, str], where: str
) -> None:
    """Put the value of the environment variable named by ``<setting>_env`` in ``setting``."""
    variable = settings.pop(f"{setting}_env", None)
    if variable is None:
        return
    if setting in settings:
        raise DeploymentConfigError(f"{where}: give {setting} or {setting}_env, not both")
    value = environ.get(variable, "")
    if not value:
        raise DeploymentConfigError(
            f"{where}: the environment variable {variable!r} named by {setting}_env is not set"
        )
    settings[setting] = value


def _typed(values: Any, fields: Mapping[str, type], where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise DeploymentConfigError(f"{where} must be a table of settings")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DeploymentConfigError(f"{where}: unknown settings {unknown}")
    typed: dict[str, Any] = {}
    for key, value in values.items():
        kind = fields[key]
        # bool is an int in Python, but never a number in a configuration file.
        if isinstance(value, bool) or not (
            isinstance(value, kind) or (kind is float and isinstance(value, int))
        ):
            raise DeploymentConfigError(f"{where}: {key} must be of type {kind.__name__}")
        typed[key] = float(value) if kind is float else value
    return typed


def _check_url(url: str, where: str, *, base: bool = False) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeploymentConfigError(f"{where} must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise DeploymentConfigError(f"{where} must not hold credentials")
    if base and (parts.query or parts.fragment):
        raise DeploymentConfigError(f"{where} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        raise DeploymentConfigError(f"{where} has an invalid port") from None
    return url.rstrip("/") if base else url
