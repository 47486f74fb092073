"""sentinelhub-py's names in rsgrpc.download: the same fields, helpers, signatures, classes and
decoded results, checked against sentinelhub-py where it is installed, and without it."""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from dataclasses import fields
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
from download_helpers import deployment_for, process_request
from rasterio.io import MemoryFile

from rsgrpc.download import (
    CacheCollisionError,
    DecodingError,
    DownloadClient,
    DownloadFailedWarning,
    DownloadRequest,
    InvalidRequestError,
    MimeType,
    NotFoundError,
    OutOfRequestsError,
    RetryPolicy,
    SentinelHubDownloadClient,
    SHConfig,
    SHDeprecationWarning,
    SHRateLimitWarning,
    decode_data,
)
from rsgrpc.download import errors as our_errors
from rsgrpc.download.sentinelhub_client import config_from_deployment, deployment_from_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    """An empty config folder and no sentinelhub-py variables in the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("SH_PROFILE", "SH_CLIENT_ID", "SH_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "config" / "sentinelhub" / "config.toml"


def sentinelhub() -> Any:
    return pytest.importorskip("sentinelhub")


# -- SHConfig ---------------------------------------------------------------------------------


def test_config_has_sentinelhubs_fields_and_defaults(config_home):
    theirs = sentinelhub().SHConfig(use_defaults=True)
    ours = SHConfig(use_defaults=True)
    assert list(ours.to_dict(mask_credentials=False).items()) == list(
        theirs.to_dict(mask_credentials=False).items()
    )
    assert ours.CREDENTIALS == theirs.CREDENTIALS
    assert ours.get_config_location() == theirs.get_config_location()


def test_sentinelhubs_own_client_accepts_our_config(hub, config_home, monkeypatch):
    sh = sentinelhub()
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    deployment = deployment_for(hub)
    config = SHConfig(
        use_defaults=True,
        sh_client_id=deployment.client_id,
        sh_client_secret=deployment.client_secret,
        sh_base_url=hub.base_url,
        sh_token_url=hub.token_url,
    )
    assert isinstance(config, sh.SHConfig)
    sh.SentinelHubDownloadClient.clear_cache()
    try:
        theirs = sh.SentinelHubDownloadClient(config=config)
        request = sh.DownloadRequest(
            url=hub.process_url,
            request_type="POST",
            post_values={"id": "r2", "format": "json"},
            headers={"Content-Type": "application/json"},
            use_session=True,
            data_type=sh.MimeType.JSON,
        )
        assert theirs.download([request]) == [
            json.loads(hub.body_for({"id": "r2", "format": "json"})[0])
        ]
    finally:
        sh.SentinelHubDownloadClient.clear_cache()


def test_config_files_are_shared_both_ways(config_home):
    sh = sentinelhub()
    SHConfig(use_defaults=True, sh_client_id="ours", download_timeout_seconds=7.5).save("mine")
    read_by_them = sh.SHConfig("mine")
    assert read_by_them.sh_client_id == "ours" and read_by_them.download_timeout_seconds == 7.5
    sh.SHConfig(use_defaults=True, sh_base_url="https://x.example", max_retries=4).save("theirs")
    read_by_us = SHConfig("theirs")
    assert read_by_us.sh_base_url == "https://x.example" and read_by_us.max_retries == 4
    # Saving one profile keeps the others.
    assert SHConfig("mine").sh_client_id == "ours"
    assert read_by_us.to_dict(False) == sh.SHConfig("theirs").to_dict(False)


def test_config_reads_the_file_profile_then_environment_then_arguments(config_home, monkeypatch):
    assert not config_home.exists()
    assert SHConfig().to_dict(False) == SHConfig(use_defaults=True).to_dict(False)
    assert config_home.exists(), "the default file is written on first use, as sentinelhub-py"
    SHConfig(use_defaults=True, sh_client_id="from-file", instance_id="abc").save("work")
    monkeypatch.setenv("SH_PROFILE", "work")
    assert SHConfig().sh_client_id == "from-file" and SHConfig().instance_id == "abc"
    monkeypatch.setenv("SH_CLIENT_ID", "from-env")
    monkeypatch.setenv("SH_CLIENT_SECRET", "secret-from-env")
    config = SHConfig()
    assert (config.sh_client_id, config.sh_client_secret) == ("from-env", "secret-from-env")
    assert SHConfig(sh_client_id="from-argument").sh_client_id == "from-argument"
    assert SHConfig(profile="default-profile").instance_id == ""
    assert SHConfig(use_defaults=True).sh_client_id == ""
    with pytest.raises(KeyError, match="nowhere"):
        SHConfig(profile="nowhere")


def test_config_masks_credentials_in_repr_str_and_dict(config_home):
    secret = "a-long-secret-value-9876"
    config = SHConfig(use_defaults=True, sh_client_secret=secret, aws_secret_access_key="short")
    for shown in (repr(config), str(config), str(config.to_dict())):
        assert secret not in shown and "a-long" not in shown
    assert config.to_dict()["sh_client_secret"] == "*" * 20 + "9876"
    assert config.to_dict()["aws_secret_access_key"] == "*****"
    assert config.to_dict(mask_credentials=False)["sh_client_secret"] == secret
    copied = config.copy()
    assert copied == config and copied is not config
    theirs = sentinelhub().SHConfig(
        use_defaults=True, sh_client_secret=secret, aws_secret_access_key="short"
    )
    assert repr(config) == repr(theirs) and str(config) == str(theirs)


def test_config_checks_values_and_replaces_the_auth_base_url(config_home):
    with pytest.raises(ValueError, match="max_wfs_records_per_query"):
        SHConfig(use_defaults=True, max_wfs_records_per_query=101)
    # sentinelhub-py's own SHDeprecationWarning when it is installed, else ours.
    with pytest.warns(DeprecationWarning, match="sh_auth_base_url"):
        config = SHConfig(use_defaults=True, sh_auth_base_url="https://auth.example")
    assert config.sh_token_url == "https://auth.example/oauth/token"


# -- MimeType -------------------------------------------------------------------------------


def _outcome(call: Any) -> Any:
    try:
        value = call()
    except (KeyError, ValueError) as error:
        return type(error).__name__
    return getattr(value, "value", value)


def test_mime_types_and_helpers_answer_as_sentinelhubs():
    theirs = sentinelhub().MimeType
    assert [(item.name, item.value) for item in MimeType] == [
        (item.name, item.value) for item in theirs
    ]
    for ours in MimeType:
        other = theirs(ours.value)
        for helper in ("is_image_format", "is_api_format", "get_string", "get_expected_max_value"):
            assert _outcome(getattr(ours, helper)) == _outcome(getattr(other, helper)), (
                ours,
                helper,
            )
        assert ours.extension == other.extension
        for path in ("a/b.tiff", "x.tif", "y.json", "z.tar.gz", "w.jpg"):
            assert ours.matches_extension(path) == other.matches_extension(path)
        assert MimeType.has_value(ours.value) and not MimeType.has_value("bogus")
    names = [
        *(item.value for item in MimeType),
        *(["tif", "jpeg", "hdf5", "h5", "bogus"]),
        *[
            "image/tiff",
            "image/png",
            "image/jpeg",
            "image/jp2",
            "application/json",
            "text/plain",
            "text/xml",
            "application/xml",
            "text/csv",
            "application/zip",
            "application/x-tar",
            "application/gzip",
            "application/geo+json",
            "application/octet-stream",
            "application/x-hdf",
            "image/jpeg2000",
        ],
    ]
    for name in names:
        assert _outcome(lambda name=name: MimeType.from_string(name)) == _outcome(
            lambda name=name: theirs.from_string(name)
        ), name


def test_mime_type_from_string_also_takes_parameters_and_upper_case():
    assert MimeType.from_string("image/tiff; charset=binary") is MimeType.TIFF
    assert MimeType.from_string("text/plain; charset=utf-8") is MimeType.TXT
    assert MimeType.from_string("TIF") is MimeType.TIFF
    assert MimeType.TIFF.is_tiff_format() and not MimeType.PNG.is_tiff_format()
    with pytest.raises(ValueError, match="not supported"):
        MimeType.from_string("application/x-bogus")


def test_sentinelhub_enums_are_accepted():
    sh = sentinelhub()
    assert MimeType(sh.MimeType.TIFF) is MimeType.TIFF
    request = DownloadRequest(
        url="http://x", request_type=sh.constants.RequestType.POST, data_type=sh.MimeType.PNG
    )
    assert request.data_type is MimeType.PNG and request.request_type.value == "POST"


# -- exceptions and warnings ----------------------------------------------------------------

SENTINELHUB_NAMES = (
    "BaseSentinelHubException",
    "DownloadFailedException",
    "OutOfRequestsException",
    "AwsDownloadFailedException",
    "ImageDecodingError",
    "MissingDataInRequestException",
    "HashedNameCollisionException",
    "SHDeprecationWarning",
    "SHUserWarning",
    "SHRuntimeWarning",
    "SHRateLimitWarning",
)


@pytest.mark.parametrize("name", SENTINELHUB_NAMES)
def test_exceptions_and_warnings_subclass_sentinelhubs(name):
    theirs = getattr(sentinelhub().exceptions, name)
    ours = getattr(our_errors, name)
    assert ours is not theirs and issubclass(ours, theirs) and ours.__name__ == name


def test_our_errors_are_caught_by_sentinelhubs_names():
    exceptions = sentinelhub().exceptions
    assert issubclass(NotFoundError, exceptions.DownloadFailedException)
    assert issubclass(OutOfRequestsError, exceptions.OutOfRequestsException)
    assert issubclass(CacheCollisionError, exceptions.HashedNameCollisionException)
    assert issubclass(DecodingError, exceptions.ImageDecodingError)
    assert issubclass(DecodingError, ValueError) and issubclass(InvalidRequestError, ValueError)
    assert issubclass(DownloadFailedWarning, exceptions.SHRuntimeWarning)
    error = NotFoundError("gone", url="http://x", status_code=404)
    assert (str(error), error.url, error.status_code, error.request_exception) == (
        "gone",
        "http://x",
        404,
        None,
    )


WITHOUT_SENTINELHUB = """
import sys
sys.modules["sentinelhub"] = None
import json
import rsgrpc.download as d
names = {names!r}
bases = {{name: [cls.__module__ for cls in getattr(d.errors, name).__mro__] for name in names}}
config = d.SHConfig(use_defaults=True, sh_client_id="x")
print(json.dumps({{
    "config_bases": sorted({{cls.__module__ for cls in d.SHConfig.__mro__}}),
    "defaults": d.SHConfig(use_defaults=True).to_dict(mask_credentials=False),
    "foreign": sorted({{module for mro in bases.values() for module in mro if "sentinelhub" in module}}),
    "download_failed": issubclass(d.NotFoundError, d.DownloadFailedException),
    "runtime": issubclass(d.DownloadFailedWarning, d.SHRuntimeWarning),
    "client_id": config.sh_client_id,
    "text": d.decode_data(b"abc", d.MimeType.TXT).decode(),
}}))
"""


def test_names_exist_without_sentinelhub(config_home):
    code = WITHOUT_SENTINELHUB.format(names=SENTINELHUB_NAMES)
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    assert answer.pop("config_bases") == ["builtins", "rsgrpc.download.config"]
    defaults = answer.pop("defaults")
    assert defaults["sh_base_url"] == "https://services.sentinel-hub.com"
    assert defaults["max_download_attempts"] == 4 and defaults["max_retries"] is None
    if importlib.util.find_spec("sentinelhub") is not None:
        from sentinelhub import SHConfig as TheirConfig

        assert list(defaults.items()) == list(
            TheirConfig(use_defaults=True).to_dict(mask_credentials=False).items()
        )
    assert answer == {
        "foreign": [],
        "download_failed": True,
        "runtime": True,
        "client_id": "x",
        "text": "abc",
    }


# -- decoded results ------------------------------------------------------------------------


def _raster(driver: str, data: np.ndarray, **options: Any) -> bytes:
    planes = data if data.ndim == 3 else data[np.newaxis]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile() as memory_file:
            with memory_file.open(
                driver=driver,
                width=planes.shape[2],
                height=planes.shape[1],
                count=planes.shape[0],
                dtype=planes.dtype.name,
                **options,
            ) as dataset:
                dataset.write(planes)
            return bytes(memory_file.read())


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


PLANAR = np.arange(4 * 32 * 40, dtype="float32").reshape(4, 32, 40)
RGB = (np.arange(3 * 20 * 30).reshape(3, 20, 30) * 7 % 256).astype("uint8")
LEVELS = (np.arange(24 * 16).reshape(24, 16) * 41 % 32768).astype("uint16")


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"hello")
    return buffer.getvalue()


DECODED_CASES: dict[str, tuple[bytes, MimeType]] = {
    "planar 4-band float32 tiff": (_raster("GTiff", PLANAR, interleave="band"), MimeType.TIFF),
    "pixel 4-band float32 tiff": (_raster("GTiff", PLANAR, interleave="pixel"), MimeType.TIFF),
    "tiled deflate rgb tiff": (
        _raster("GTiff", RGB, tiled=True, blockxsize=16, blockysize=16, compress="deflate"),
        MimeType.TIFF,
    ),
    "single-band uint16 tiff": (_raster("GTiff", LEVELS), MimeType.TIFF),
    "rgb png": (_raster("PNG", RGB), MimeType.PNG),
    "gray uint16 png": (_raster("PNG", LEVELS), MimeType.PNG),
    "rgb jpeg": (_raster("JPEG", RGB, quality=90), MimeType.JPG),
    "8-bit jp2": (_raster("JP2OpenJPEG", RGB[0], CODEC="JP2", REVERSIBLE="YES"), MimeType.JP2),
    "15-bit jp2": (
        _raster("JP2OpenJPEG", LEVELS, CODEC="JP2", REVERSIBLE="YES", NBITS=15),
        MimeType.JP2,
    ),
    "json object": (b'{"a": [1, 2.5, null], "b": "\\u00e9"}', MimeType.JSON),
    "json list": (b"[1, 2]", MimeType.JSON),
    "empty json": (b"", MimeType.JSON),
    "xml": (b"<a x='1'><b>text</b><c/></a>", MimeType.XML),
    "gml": (b"<gml:Point xmlns:gml='http://www.opengis.net/gml'/>", MimeType.GML),
    "safe manifest": (b"<xfdu:XFDU xmlns:xfdu='urn:ccsds'/>", MimeType.SAFE),
    "text": ("héllo\n".encode(), MimeType.TXT),
    "raw": (bytes(range(256)), MimeType.RAW),
    "zip": (_zip(), MimeType.ZIP),
    "tar": (
        _tar(
            {
                "default.tif": _raster("GTiff", PLANAR, interleave="band"),
                "userdata.json": b'{"k": 1}',
                "notes.txt": b"n",
            }
        ),
        MimeType.TAR,
    ),
}


def _same(ours: Any, theirs: Any) -> None:
    assert type(ours) is type(theirs)
    if isinstance(theirs, np.ndarray):
        assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype)
        np.testing.assert_array_equal(ours, theirs)
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for key in theirs:
            _same(ours[key], theirs[key])
    elif isinstance(theirs, io.BytesIO):
        assert ours.getvalue() == theirs.getvalue()
    elif isinstance(theirs, ElementTree.Element):
        assert ElementTree.tostring(ours) == ElementTree.tostring(theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("case", sorted(DECODED_CASES))
def test_decoded_data_is_what_sentinelhub_decodes(case):
    sh = sentinelhub()
    content, data_type = DECODED_CASES[case]
    _same(
        decode_data(content, data_type),
        sh.decoding.decode_data(content, sh.MimeType(data_type.value)),
    )


def test_planar_tiff_keeps_bands_first_and_pixel_tiff_bands_last():
    planar, _ = DECODED_CASES["planar 4-band float32 tiff"]
    pixel, _ = DECODED_CASES["pixel 4-band float32 tiff"]
    np.testing.assert_array_equal(decode_data(planar, MimeType.TIFF), PLANAR)
    np.testing.assert_array_equal(decode_data(pixel, MimeType.TIFF), np.moveaxis(PLANAR, 0, -1))


def test_text_raw_zip_and_tar_decode_to_sentinelhubs_types():
    assert decode_data("héllo".encode(), MimeType.TXT) == "héllo".encode()
    assert decode_data(b"\x00", MimeType.RAW) == b"\x00"
    archive = decode_data(DECODED_CASES["zip"][0], MimeType.ZIP)
    assert isinstance(archive, io.BytesIO)
    assert zipfile.ZipFile(archive).read("a.txt") == b"hello"
    members = decode_data(DECODED_CASES["tar"][0], MimeType.TAR)
    assert list(members) == ["default.tif", "userdata.json", "notes.txt"]
    np.testing.assert_array_equal(members["default.tif"], PLANAR)
    assert members["userdata.json"] == {"k": 1} and members["notes.txt"] == b"n"


@pytest.mark.parametrize(
    "data_type",
    [MimeType.TIFF, MimeType.PNG, MimeType.JPG, MimeType.JSON, MimeType.XML, MimeType.TAR],
)
def test_undecodable_answers_raise_decoding_error(data_type):
    with pytest.raises(DecodingError):
        decode_data(b"\xff\xfe not an image, json, xml or tar", data_type)


def test_png_decodes_to_the_same_array_without_pillow():
    content, _ = DECODED_CASES["rgb png"]
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "from rsgrpc.download import decode_data, MimeType\n"
        "sys.stdout.buffer.write(decode_data(sys.stdin.buffer.read(), MimeType.PNG).tobytes())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        input=content,
        capture_output=True,
        cwd=REPOSITORY,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    with_pillow = decode_data(content, MimeType.PNG)
    assert with_pillow.shape == (20, 30, 3)
    assert completed.stdout == with_pillow.tobytes()


# -- clients --------------------------------------------------------------------------------


def _parameters(function: Any) -> dict[str, tuple[Any, Any]]:
    return {
        name: (parameter.kind, parameter.default)
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }


@pytest.mark.parametrize(
    "ours, path",
    [
        (DownloadClient.__init__, "DownloadClient.__init__"),
        (DownloadClient.download, "DownloadClient.download"),
        (DownloadClient.get_json, "DownloadClient.get_json"),
        (DownloadClient.get_json_dict, "DownloadClient.get_json_dict"),
        (DownloadClient.get_xml, "DownloadClient.get_xml"),
        (SentinelHubDownloadClient.__init__, "SentinelHubDownloadClient.__init__"),
        (SentinelHubDownloadClient.get_session, "SentinelHubDownloadClient.get_session"),
        (SentinelHubDownloadClient.cache_session, "SentinelHubDownloadClient.cache_session"),
        (SHConfig.__init__, "SHConfig.__init__"),
        (SHConfig.save, "SHConfig.save"),
        (SHConfig.load, "SHConfig.load"),
        (DownloadRequest.get_storage_paths, "DownloadRequest.get_storage_paths"),
    ],
)
def test_signatures_take_sentinelhubs_parameters(ours, path):
    sh = sentinelhub()
    owner, name = path.split(".")
    theirs = _parameters(getattr(getattr(sh, owner), name))
    mine = _parameters(ours)
    for parameter, (kind, default) in theirs.items():
        assert parameter in mine, f"{path} lacks {parameter}"
        if (path, parameter) == ("SentinelHubDownloadClient.__init__", "default_retry_time"):
            # None: the deployment's pause, 30 s (sentinelhub-py's default) from a config.
            assert mine[parameter] == (kind, None) and default == 30
            continue
        assert mine[parameter] == (kind, default), f"{path}({parameter})"


def test_download_request_has_sentinelhubs_fields():
    theirs = sentinelhub().DownloadRequest

    def described(request_class: Any) -> list[tuple[str, Any]]:
        return [
            (item.name, getattr(item.default, "value", item.default))
            for item in fields(request_class)
        ]

    assert described(DownloadRequest) == described(theirs)


def test_config_sets_retries_timeouts_and_pacing_as_sentinelhub(config_home):
    config = SHConfig(
        use_defaults=True,
        max_download_attempts=6,
        download_timeout_seconds=12.0,
        number_of_download_processes=4,
    )
    deployment = deployment_from_config(config, paced=True)
    assert deployment.retry.max_attempts == 6
    assert deployment.read_timeout_seconds == deployment.connect_timeout_seconds == 12.0
    assert deployment.retry.max_rate_limit_retries == sys.maxsize, "None retries 429s unbounded"
    assert deployment.requests_per_second == pytest.approx(5.0) and deployment.burst == 1
    config.max_retries = 3
    assert deployment_from_config(config).retry.max_rate_limit_retries == 2
    assert deployment_from_config(config).requests_per_second is None
    config.number_of_download_processes = 0
    assert deployment_from_config(config, paced=True).requests_per_second is None
    client = SentinelHubDownloadClient(
        config=SHConfig(use_defaults=True, number_of_download_processes=2)
    )
    assert client.deployment.requests_per_second == pytest.approx(10.0)
    assert client.default_retry_time == 30.0
    assert DownloadClient(config=config).deployment.requests_per_second is None


def test_clients_keep_their_config(hub, config_home, monkeypatch):
    config = SHConfig(use_defaults=True, sh_client_id="someone")
    assert DownloadClient(config=config).config is config
    deployment = deployment_for(hub)
    described = SentinelHubDownloadClient(deployment=deployment).config
    assert isinstance(described, SHConfig)
    assert (described.sh_base_url, described.sh_token_url, described.sh_client_id) == (
        hub.base_url,
        hub.token_url,
        deployment.client_id,
    )
    retry = deployment_from_config(config_from_deployment(deployment)).retry
    assert (retry.max_attempts, retry.backoff_base_seconds, retry.max_rate_limit_retries) == (
        deployment.retry.max_attempts,
        deployment.retry.backoff_base_seconds,
        deployment.retry.max_rate_limit_retries,
    )
    monkeypatch.setenv("SH_CLIENT_ID", "from-the-environment")
    assert DownloadClient().config.sh_client_id == "from-the-environment"


def test_single_request_is_deprecated_and_returns_its_item(hub):
    client = SentinelHubDownloadClient(deployment=deployment_for(hub))
    with client, pytest.warns(SHDeprecationWarning):
        data = client.download(process_request(hub, "r0", "json"))
    assert data == json.loads(hub.body_for({"id": "r0", "format": "json"})[0])


def test_invalid_requests_raise_even_when_errors_are_warned(hub):
    unsaved = DownloadRequest(url=hub.base_url + "/x", save_response=True)
    client = DownloadClient(deployment=deployment_for(hub), raise_download_errors=False)
    with pytest.raises(ValueError, match="data_folder"):
        client.download([unsaved])
    with pytest.warns(DownloadFailedWarning):
        assert client.download([DownloadRequest(url=hub.base_url + "/nowhere")]) == [None]


def test_clients_made_from_a_config_pickle_and_download(hub, config_home, monkeypatch):
    import pickle

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    config = SHConfig(
        use_defaults=True,
        sh_client_id=deployment_for(hub).client_id,
        sh_client_secret=deployment_for(hub).client_secret,
        sh_base_url=hub.base_url,
        sh_token_url=hub.token_url,
    )
    client = pickle.loads(pickle.dumps(SentinelHubDownloadClient(config=config)))
    assert client.config == config
    (data,) = client.download([process_request(hub, "r1", "json")])
    assert data == json.loads(hub.body_for({"id": "r1", "format": "json"})[0])


def test_each_429_is_warned_as_a_rate_limit_warning(make_hub):
    hub = make_hub(requests_per_second=0.001, burst=1)
    retry = RetryPolicy(max_attempts=1, max_rate_limit_retries=2)
    deployment = deployment_for(hub, retry=retry, max_retry_after_seconds=0.01)
    client = SentinelHubDownloadClient(deployment=deployment, raise_download_errors=False)
    with warnings.catch_warnings(record=True) as caught, client:
        warnings.simplefilter("always")
        data = client.download([process_request(hub, f"r{i}", "json") for i in range(2)], 1)
    assert data[0] == json.loads(hub.body_for({"id": "r0", "format": "json"})[0])
    assert data[1] is None
    rate_limit_warnings = [w for w in caught if issubclass(w.category, SHRateLimitWarning)]
    assert len(rate_limit_warnings) == hub.stats.rate_limited == 3
    assert [w.category for w in caught if w.category is DownloadFailedWarning] == [
        DownloadFailedWarning
    ]
