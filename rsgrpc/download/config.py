"""`SHConfig`: sentinelhub-py's configuration, its fields, file and environment variables.

Settings come from, in rising precedence: the defaults, a profile of the TOML file at
`SHConfig.get_config_location` (``$XDG_CONFIG_HOME/sentinelhub/config.toml``, else
``~/.config/sentinelhub/config.toml``; the profile is the ``profile`` argument, else
``$SH_PROFILE``, else ``default-profile``), the ``SH_CLIENT_ID`` and ``SH_CLIENT_SECRET``
environment variables, and the keyword arguments. The file is the one sentinelhub-py reads and
writes, so both libraries share it; sentinelhub-py need not be installed.

When sentinelhub-py is installed, `SHConfig` subclasses its ``SHConfig`` (and so has the
installed version's fields), so sentinelhub-py's own classes (``SentinelHubRequest``,
``SentinelHubCatalog``, its clients) accept it. Credentials are masked in ``str``, ``repr``
and `SHConfig.to_dict`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tomllib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import SHDeprecationWarning

DEFAULT_PROFILE = "default-profile"
SH_PROFILE_ENV_VAR = "SH_PROFILE"
SH_CLIENT_ID_ENV_VAR = "SH_CLIENT_ID"
SH_CLIENT_SECRET_ENV_VAR = "SH_CLIENT_SECRET"


@dataclass(repr=False)
class _Fields:
    """The settings and their defaults, as in sentinelhub-py."""

    instance_id: str = ""
    sh_client_id: str = ""
    sh_client_secret: str = ""
    sh_base_url: str = "https://services.sentinel-hub.com"
    sh_auth_base_url: str | None = None
    sh_token_url: str = (
        "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
    )
    geopedia_wms_url: str = "https://service.geopedia.world"
    geopedia_rest_url: str = "https://www.geopedia.world/rest"
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_session_token: str = ""
    aws_metadata_url: str = "https://roda.sentinel-hub.com"
    aws_s3_l1c_bucket: str = "sentinel-s2-l1c"
    aws_s3_l2a_bucket: str = "sentinel-s2-l2a"
    opensearch_url: str = "http://opensearch.sentinel-hub.com/resto/api/collections/Sentinel2"
    max_wfs_records_per_query: int = 100
    max_opensearch_records_per_query: int = 500
    max_download_attempts: int = 4
    download_sleep_time: float = 5.0
    download_timeout_seconds: float = 120.0
    number_of_download_processes: int = 1
    max_retries: int | None = None

    def __post_init__(self) -> None:
        if self.sh_auth_base_url is not None:
            self.sh_token_url = self.sh_auth_base_url + "/oauth/token"
            warnings.warn(
                "The parameter `sh_auth_base_url` of `SHConfig` has been replaced with "
                "`sh_token_url`; it was set to `sh_auth_base_url + '/oauth/token'`. Please update "
                "your configuration.",
                category=SHDeprecationWarning,
                stacklevel=4,
            )
        if self.max_wfs_records_per_query > 100:
            raise ValueError(
                "Value of config parameter `max_wfs_records_per_query` must be at most 100"
            )
        if self.max_opensearch_records_per_query > 500:
            raise ValueError(
                "Value of config parameter `max_opensearch_records_per_query` must be at most 500"
            )


class _StandaloneConfig(_Fields):
    """The base of `SHConfig` without sentinelhub-py: the fields, set from keywords."""

    def __init__(self, profile: str | None = None, *, use_defaults: bool = False, **kwargs: Any):
        _Fields.__init__(self, **kwargs)


try:
    from sentinelhub.config import SHConfig as _ConfigBase
except ImportError:
    _ConfigBase = _StandaloneConfig  # type: ignore[assignment,misc]


class SHConfig(_ConfigBase):  # type: ignore[valid-type,misc]
    """sentinelhub-py's configuration: OAuth credentials, service URLs and download settings.

    ``SHConfig(profile=None, *, use_defaults=False, **fields)``: with ``use_defaults`` neither
    the file nor the environment is read. The download client uses ``sh_client_id``,
    ``sh_client_secret``, ``sh_base_url``, ``sh_token_url``, ``max_download_attempts`` and
    ``download_sleep_time`` (5xx, reset and timeout retries), ``download_timeout_seconds``,
    ``number_of_download_processes`` (pacing, as sentinelhub-py) and ``max_retries`` (429
    retries; None: no limit, as sentinelhub-py).
    """

    CREDENTIALS: ClassVar[tuple[str, ...]] = (
        "instance_id",
        "sh_client_id",
        "sh_client_secret",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
    )

    def __init__(self, profile: str | None = None, *, use_defaults: bool = False, **kwargs: Any):
        profile = self._get_profile(profile)
        if not use_defaults:
            environment = {
                "sh_client_id": os.environ.get(SH_CLIENT_ID_ENV_VAR),
                "sh_client_secret": os.environ.get(SH_CLIENT_SECRET_ENV_VAR),
            }
            loaded = SHConfig.load(profile=profile).to_dict(mask_credentials=False)
            kwargs = {
                **loaded,
                **{key: value for key, value in environment.items() if value is not None},
                **kwargs,
            }
        # Read nothing more: set the fields.
        super().__init__(profile, use_defaults=True, **kwargs)

    def __str__(self) -> str:
        return json.dumps(self.to_dict(mask_credentials=True), indent=2)

    def __repr__(self) -> str:
        content = ",\n  ".join(
            f"{key}={value!r}" for key, value in self.to_dict(mask_credentials=True).items()
        )
        return f"{type(self).__name__}(\n  {content},\n)"

    @staticmethod
    def _get_profile(profile: str | None) -> str:
        return (
            profile if profile is not None else os.environ.get(SH_PROFILE_ENV_VAR, DEFAULT_PROFILE)
        )

    @classmethod
    def get_config_location(cls) -> str:
        """The path of the configuration file."""
        config_folder = os.getenv("XDG_CONFIG_HOME", os.path.expanduser("~/.config"))
        return os.path.join(config_folder, "sentinelhub", "config.toml")

    @classmethod
    def load(cls, profile: str | None = None) -> SHConfig:
        """The settings of ``profile`` in the configuration file (written with the defaults
        first if there is no file, as sentinelhub-py does); raises KeyError for an unknown
        profile."""
        profile = cls._get_profile(profile)
        filename = cls.get_config_location()
        if not os.path.exists(filename):
            cls(use_defaults=True).save()
        with open(filename, "rb") as file:
            profiles = tomllib.load(file)
        if profile not in profiles:
            raise KeyError(f"Profile `{profile}` not found in configuration file.")
        return cls(use_defaults=True, **profiles[profile])

    def save(self, profile: str | None = None) -> None:
        """Store the settings that differ from the defaults as ``profile`` in the configuration
        file, keeping its other profiles."""
        profile = self._get_profile(profile)
        path = Path(self.get_config_location())
        path.parent.mkdir(parents=True, exist_ok=True)
        profiles: dict[str, Any] = {}
        if path.exists():
            with open(path, "rb") as file:
                profiles = tomllib.load(file)
        profiles[profile] = self._get_dict_of_diffs_from_defaults()
        text = _toml_profiles(profiles)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)

    def _get_dict_of_diffs_from_defaults(self) -> dict[str, Any]:
        current = self.to_dict(mask_credentials=False)
        defaults = SHConfig(use_defaults=True).to_dict(mask_credentials=False)
        return {key: value for key, value in current.items() if defaults[key] != value}

    def copy(self) -> SHConfig:
        """A copy of this configuration."""
        return copy.copy(self)

    def to_dict(self, mask_credentials: bool = True) -> dict[str, Any]:
        """The settings as a dict; credentials masked unless ``mask_credentials`` is False."""
        values = asdict(self)
        if mask_credentials:
            for name in self.CREDENTIALS:
                values[name] = _mask(values[name])
        return values


def _mask(value: str) -> str:
    """All but the last 4 characters starred, and at least 10 of them when there are."""
    hidden = min(max(len(value) - 4, 10), len(value))
    return "*" * hidden + value[hidden:]


def _toml_profiles(profiles: dict[str, Any]) -> str:
    """The profiles as TOML tables of scalar settings."""
    lines: list[str] = []
    for name, settings in profiles.items():
        lines.append(f"[{json.dumps(str(name), ensure_ascii=False)}]")
        for key, value in settings.items():
            if value is None:
                continue
            lines.append(f"{json.dumps(str(key), ensure_ascii=False)} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are all valid in TOML basic strings.
        return json.dumps(value, ensure_ascii=False)
    raise ValueError(f"cannot store a setting of type {type(value).__name__} in the config file")
