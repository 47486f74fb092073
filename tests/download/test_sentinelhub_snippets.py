"""sentinelhub-py download snippets run unchanged but for the import, against a fake Sentinel Hub.

Each snippet is written once, in the style of sentinelhub-py's documentation and examples,
with its imports as ``from {library} import ...``. It runs with ``rsgrpc.download`` (checked
against what the fake server holds), and, when sentinelhub-py is installed, with
``sentinelhub`` too: every decoded result (type, shape, dtype, values) must be the same.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
from fake_sentinelhub import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeSentinelHub,
    _Handler,
    _images,
    _Server,
)
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

# -- a fake Sentinel Hub that also serves files, catalogues, XML and archives --------------

PLANAR = np.arange(4 * 32 * 40, dtype="uint16").reshape(4, 32, 40) * 7
PIXEL = (np.arange(4 * 20 * 24, dtype="uint8").reshape(4, 20, 24) * 3) % 251
SINGLE = np.linspace(-1.0, 1.0, 30 * 36, dtype="float32").reshape(30, 36)
GRAY = (np.arange(18 * 22).reshape(18, 22) % 256).astype("uint8")
RGBA = (np.arange(4 * 16 * 12).reshape(4, 16, 12) % 256).astype("uint8")
CAPABILITIES = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<WMS_Capabilities version="1.3.0"><Service><Name>WMS</Name><Title>Fake</Title></Service>'
    b'<Capability><Layer queryable="1"><Name>TRUE-COLOR</Name></Layer>'
    b"<Layer><Name>NDVI</Name></Layer></Capability></WMS_Capabilities>"
)
COLLECTIONS = {
    "collections": [{"id": "sentinel-2-l2a", "bands": 13}, {"id": "landsat-ot-l2"}],
    "context": {"limit": 10, "returned": 2},
}
NOTES = b"Bands: B04, B08\nthe second line\n"
RAW = bytes(range(256)) * 3


def _tiff(data: np.ndarray, interleave: str) -> bytes:
    count = 1 if data.ndim == 2 else data.shape[0]
    rows, cols = data.shape[-2:]
    with MemoryFile() as memory_file:
        with memory_file.open(
            driver="GTiff",
            width=cols,
            height=rows,
            count=count,
            dtype=data.dtype.name,
            crs="EPSG:32633",
            transform=from_origin(500000, 5000000, 10, 10),
            interleave=interleave,
        ) as dataset:
            dataset.write(data if data.ndim == 3 else data[np.newaxis])
        return bytes(memory_file.read())


def _png(data: np.ndarray) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile() as memory_file:
            count = 1 if data.ndim == 2 else data.shape[0]
            with memory_file.open(
                driver="PNG",
                width=data.shape[-1],
                height=data.shape[-2],
                count=count,
                dtype="uint8",
            ) as dataset:
                dataset.write(data if data.ndim == 3 else data[np.newaxis])
            return bytes(memory_file.read())


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # A fixed time in each member's header: every call gives the same bytes.
        for name, text in (("notes.txt", NOTES), ("collections.json", json.dumps(COLLECTIONS))):
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


FILES: dict[str, tuple[bytes, str]] = {
    "planar.tiff": (_tiff(PLANAR, "band"), "image/tiff"),
    "pixel.tiff": (_tiff(PIXEL, "pixel"), "image/tiff"),
    "single.tiff": (_tiff(SINGLE, "band"), "image/tiff"),
    "gray.png": (_png(GRAY), "image/png"),
    "rgba.png": (_png(RGBA), "image/png"),
    "notes.txt": (NOTES, "text/plain"),
    # No Content-Type: a RAW request then stays raw in both libraries.
    "data.bin": (RAW, ""),
    "archive.zip": (_zip(), "application/zip"),
    "capabilities.xml": (CAPABILITIES, "text/xml"),
    "collections.json": (json.dumps(COLLECTIONS).encode(), "application/json"),
    "list.json": (json.dumps([1, 2, 3]).encode(), "application/json"),
}
FILES_PATH = "/files/"
ECHO_PATH = "/api/v1/echo"
ALWAYS_429_PATH = "/api/v1/busy"


class _SnippetHandler(_Handler):
    """The fake's handler, with GET for ``/files/<name>``, a JSON echo and an endpoint that
    always answers 429."""

    def _count(self) -> None:
        server: _SnippetServer = self.server  # type: ignore[assignment]
        with server.fake._lock:
            server.hits[urllib.parse.urlsplit(self.path).path] += 1

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._count()
        path = urllib.parse.urlsplit(self.path).path
        name = path.removeprefix(FILES_PATH)
        if path.startswith(FILES_PATH) and name in FILES:
            body, content_type = FILES[name]
            if content_type:
                self._answer(200, body, content_type)
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        elif path == ALWAYS_429_PATH:
            self._answer(429, b'{"error": "busy"}', "application/json", {"Retry-After": "10"})
        else:
            self._json(404, {"error": {"status": 404, "message": f"no such file {name}"}})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._count()
        if urllib.parse.urlsplit(self.path).path == ECHO_PATH:
            body = self._read_body()
            self._json(
                200,
                {"content_type": self.headers.get("Content-Type"), "body": json.loads(body)},
            )
            return
        super().do_POST()


class _SnippetServer(_Server):
    hits: Any


class SnippetHub(FakeSentinelHub):
    """`FakeSentinelHub` whose processing endpoint also answers ``"tar"`` (a Process API
    multi-part answer) and that serves `FILES`."""

    @staticmethod
    def body_for(payload: dict[str, Any]) -> tuple[bytes, str]:
        if payload.get("format") == "tar":
            userdata = json.dumps({"id": payload.get("id"), "norm": [0.5, 2]}).encode()
            members = {"default.tif": _images("GTiff", 1), "userdata.json": userdata}
            return _tar(members), "application/x-tar"
        return FakeSentinelHub.body_for(payload)

    def start(self) -> None:
        import collections

        _images("GTiff", 1)
        server = _SnippetServer(("127.0.0.1", 0), _SnippetHandler)
        server.fake = self
        server.hits = collections.Counter()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"

    @property
    def hits(self) -> Any:
        return self._server.hits  # type: ignore[union-attr]


# -- the snippets ----------------------------------------------------------------------------

CONFIG = """
config = SHConfig(
    sh_client_id=CLIENT_ID,
    sh_client_secret=CLIENT_SECRET,
    sh_base_url=BASE_URL,
    sh_token_url=TOKEN_URL,
)
"""

SNIPPETS: dict[str, str] = {
    "process_api_tiff": """
from {library} import DownloadRequest, MimeType, SentinelHubDownloadClient, SHConfig
"""
    + CONFIG
    + """
requests = [
    DownloadRequest(
        url=f"{BASE_URL}/api/v1/process",
        request_type="POST",
        post_values={"id": f"tile-{index}", "format": "tiff"},
        headers={"Content-Type": "application/json"},
        use_session=True,
        data_type=MimeType.TIFF,
    )
    for index in range(4)
]
client = SentinelHubDownloadClient(config=config)
result = client.download(requests, max_threads=2, show_progress=True)
""",
    "process_api_png_and_jpeg": """
from {library} import DownloadRequest, MimeType, SentinelHubDownloadClient, SHConfig
"""
    + CONFIG
    + """
def process_request(name, image_format, mime_type):
    return DownloadRequest(
        url=f"{BASE_URL}/api/v1/process",
        request_type="POST",
        post_values={"id": name, "format": image_format},
        headers={"Content-Type": "application/json"},
        use_session=True,
        data_type=mime_type,
    )

requests = [process_request("a", "png", MimeType.PNG), process_request("b", "jpeg", MimeType.JPG)]
result = SentinelHubDownloadClient(config=config).download(requests)
""",
    "tiff_axis_orders": """
from {library} import DownloadClient, DownloadRequest, MimeType, SHConfig

config = SHConfig(use_defaults=True)
client = DownloadClient(config=config)
names = ["planar.tiff", "pixel.tiff", "single.tiff"]
requests = [DownloadRequest(url=f"{BASE_URL}/files/{name}", data_type=MimeType.TIFF) for name in names]
result = dict(zip(names, client.download(requests)))
""",
    "png_shapes": """
from {library} import DownloadClient, DownloadRequest, MimeType, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
result = client.download(
    [DownloadRequest(url=f"{BASE_URL}/files/{name}", data_type=MimeType.PNG) for name in ("gray.png", "rgba.png")]
)
""",
    "get_json_catalog": """
from {library} import DownloadClient, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
collections = client.get_json(f"{BASE_URL}/files/collections.json")
context = client.get_json_dict(f"{BASE_URL}/files/collections.json", extract_key="context")
echo = client.get_json(f"{BASE_URL}/api/v1/echo", post_values={"bbox": [13.35, 45.77, 13.83, 46.13]})
result = collections, context, echo
""",
    "get_json_dict_refuses_a_list": """
from {library} import DownloadClient, SHConfig
from {exceptions} import MissingDataInRequestException

client = DownloadClient(config=SHConfig(use_defaults=True))
try:
    client.get_json_dict(f"{BASE_URL}/files/list.json")
except MissingDataInRequestException as exception:
    result = str(exception)
""",
    "get_xml_capabilities": """
from {library} import DownloadClient, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
root = client.get_xml(f"{BASE_URL}/files/capabilities.xml")
result = root, [layer.text for layer in root.iter("Name")]
""",
    "text_raw_and_zip": """
import zipfile

from {library} import DownloadClient, DownloadRequest, MimeType, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
notes, raw, archive = client.download(
    [
        DownloadRequest(url=f"{BASE_URL}/files/notes.txt", data_type=MimeType.TXT),
        DownloadRequest(url=f"{BASE_URL}/files/data.bin"),
        DownloadRequest(url=f"{BASE_URL}/files/archive.zip", data_type=MimeType.ZIP),
    ]
)
with zipfile.ZipFile(archive) as opened:
    members = {name: opened.read(name) for name in opened.namelist()}
result = notes, raw, archive, members
""",
    "raw_request_decoded_by_content_type": """
from {library} import DownloadClient, DownloadRequest, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
result = client.download(
    [DownloadRequest(url=f"{BASE_URL}/files/{name}") for name in ("collections.json", "pixel.tiff")]
)
""",
    "process_api_tar": """
from {library} import DownloadRequest, MimeType, SentinelHubDownloadClient, SHConfig
"""
    + CONFIG
    + """
request = DownloadRequest(
    url=f"{BASE_URL}/api/v1/process",
    request_type="POST",
    post_values={"id": "multi", "format": "tar"},
    headers={"Content-Type": "application/json", "Accept": "application/tar"},
    use_session=True,
    data_type=MimeType.TAR,
)
result = SentinelHubDownloadClient(config=config).download([request])
""",
    "cached_in_data_folder": """
import os

from {library} import DownloadRequest, MimeType, SentinelHubDownloadClient, SHConfig
"""
    + CONFIG
    + """
def make_request():
    return DownloadRequest(
        url=f"{BASE_URL}/api/v1/process",
        request_type="POST",
        post_values={"id": "cached", "format": "tiff"},
        headers={"Content-Type": "application/json"},
        use_session=True,
        data_type=MimeType.TIFF,
        save_response=True,
        data_folder=DATA_FOLDER,
    )

first = SentinelHubDownloadClient(config=config).download([make_request()])
second = SentinelHubDownloadClient(config=config).download([make_request()])
third = SentinelHubDownloadClient(config=config, redownload=True).download([make_request()])
files = sorted(
    os.path.relpath(os.path.join(folder, name), DATA_FOLDER)
    for folder, _, names in os.walk(DATA_FOLDER)
    for name in names
)
result = first, second, third, files, make_request().get_hashed_name()
""",
    "custom_filename_and_no_return": """
import os

from {library} import DownloadClient, DownloadRequest, MimeType, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
saved = DownloadRequest(
    url=f"{BASE_URL}/files/gray.png",
    data_type=MimeType.PNG,
    save_response=True,
    data_folder=DATA_FOLDER,
    filename="images/gray.png",
    return_data=False,
)
returned = client.download([saved])
with open(os.path.join(DATA_FOLDER, "images", "gray.png"), "rb") as file:
    content = file.read()
result = returned, content, os.listdir(DATA_FOLDER)
""",
    "responses_without_decoding": """
from {library} import DownloadClient, DownloadRequest, MimeType, SHConfig

client = DownloadClient(config=SHConfig(use_defaults=True))
(response,) = client.download(
    [DownloadRequest(url=f"{BASE_URL}/files/single.tiff", data_type=MimeType.TIFF)],
    decode_data=False,
)
result = response.content, response.status_code, response.response_type.value, response.decode()
""",
    "config_from_file_and_environment": """
import os

from {library} import DownloadRequest, MimeType, SentinelHubDownloadClient, SHConfig

with open(SHConfig.get_config_location(), "w") as file:
    file.write(
        f'[default-profile]\\n\\n[fake-hub]\\nsh_base_url = "{BASE_URL}"\\n'
        f'sh_token_url = "{TOKEN_URL}"\\nmax_download_attempts = 2\\n'
    )
os.environ["SH_PROFILE"] = "fake-hub"
os.environ["SH_CLIENT_ID"] = CLIENT_ID
os.environ["SH_CLIENT_SECRET"] = CLIENT_SECRET
config = SHConfig()
request = DownloadRequest(
    url=f"{config.sh_base_url}/api/v1/process",
    request_type="POST",
    post_values={"id": "env", "format": "json"},
    headers={"Content-Type": "application/json"},
    use_session=True,
    data_type=MimeType.JSON,
)
client = SentinelHubDownloadClient(config=config)
result = client.download([request]), config.to_dict(), repr(config), str(config), client.config.max_download_attempts
""",
    "failures_raised_or_warned": """
import warnings

from {library} import DownloadClient, DownloadFailedException, DownloadRequest, MimeType, SHConfig
from {exceptions} import SHRuntimeWarning

config = SHConfig(use_defaults=True, max_download_attempts=1)
good = DownloadRequest(url=f"{BASE_URL}/files/notes.txt", data_type=MimeType.TXT)
missing = DownloadRequest(url=f"{BASE_URL}/files/missing.tiff", data_type=MimeType.TIFF)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    data = DownloadClient(config=config, raise_download_errors=False).download([good, missing])
runtime_warnings = [
    issubclass(warning.category, SHRuntimeWarning) for warning in caught if "missing" in str(warning.message)
]
try:
    DownloadClient(config=config).download([missing])
    raised = None
except DownloadFailedException as exception:
    raised = "404" in str(exception)
result = data, runtime_warnings, raised
""",
    "sessions_cached_and_from_token": """
from {library} import DownloadRequest, MimeType, SentinelHubDownloadClient, SentinelHubSession, SHConfig
"""
    + CONFIG
    + """
session = SentinelHubSession(config=config)
SentinelHubDownloadClient.cache_session(session)
client = SentinelHubDownloadClient(config=config)
reused = client.get_session() is session
borrowed = SentinelHubSession.from_token(session.token)
request = DownloadRequest(
    url=f"{BASE_URL}/api/v1/process",
    request_type="POST",
    post_values={"id": "session", "format": "json"},
    headers={"Content-Type": "application/json"},
    use_session=True,
    data_type=MimeType.JSON,
)
data = SentinelHubDownloadClient(session=borrowed).download([request])
result = reused, session.info()["azp"], sorted(session.session_headers), data
""",
    "max_retries_on_429": """
import warnings

from {library} import DownloadRequest, SentinelHubDownloadClient, SHConfig
from {exceptions} import OutOfRequestsException
"""
    + CONFIG
    + """
config.max_retries = 3
request = DownloadRequest(url=f"{BASE_URL}/api/v1/busy")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        SentinelHubDownloadClient(config=config).download([request])
        result = "no error"
    except OutOfRequestsException:
        result = "out of requests"
""",
}


# -- running them ---------------------------------------------------------------------------


@pytest.fixture
def snippet_hub() -> Any:
    with SnippetHub() as hub:
        yield hub


@pytest.fixture
def run_snippet(snippet_hub, tmp_path, monkeypatch) -> Callable[[str, str], Any]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    for name in ("SH_PROFILE", "SH_CLIENT_ID", "SH_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config" / "sentinelhub").mkdir(parents=True)

    def run(name: str, library: str) -> Any:
        exceptions = "rsgrpc.download" if library == "rsgrpc.download" else "sentinelhub.exceptions"
        text = SNIPPETS[name].replace("{library}", library).replace("{exceptions}", exceptions)
        data_folder = tmp_path / f"data-{library}"
        data_folder.mkdir()
        namespace: dict[str, Any] = {
            "BASE_URL": snippet_hub.base_url,
            "TOKEN_URL": snippet_hub.token_url,
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            "DATA_FOLDER": str(data_folder),
        }
        # The environment a snippet sets is restored after it ran.
        with monkeypatch.context() as scoped:
            for variable in ("SH_PROFILE", "SH_CLIENT_ID", "SH_CLIENT_SECRET"):
                # Set first so that the context records the variable and removes it again.
                scoped.setenv(variable, "")
                scoped.delenv(variable)
            exec(compile(text, f"<snippet {name} with {library}>", "exec"), namespace)
        return namespace["result"]

    return run


def assert_same(ours: Any, theirs: Any, where: str = "result") -> None:
    """``ours`` and ``theirs`` are the same data: types (by name), shapes, dtypes and values."""
    assert type(ours).__name__ == type(theirs).__name__, where
    if isinstance(theirs, np.ndarray):
        assert ours.shape == theirs.shape, where
        assert ours.dtype == theirs.dtype, where
        np.testing.assert_array_equal(ours, theirs, err_msg=where)
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), where
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(mine, other, f"{where}[{index}]")
    elif isinstance(theirs, io.BytesIO):
        assert ours.getvalue() == theirs.getvalue(), where
    elif isinstance(theirs, ElementTree.Element):
        assert ElementTree.tostring(ours) == ElementTree.tostring(theirs), where
    else:
        assert ours == theirs, where


# What each snippet must give with rsgrpc.download, from what the fake server holds.
def _body(payload: dict[str, Any]) -> bytes:
    return SnippetHub.body_for(payload)[0]


def _pixels(content: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile(content) as memory_file, memory_file.open() as dataset:
            return np.moveaxis(dataset.read(), 0, -1)


def _expect_tiffs(result: Any, _: Any) -> None:
    for index, array in enumerate(result):
        np.testing.assert_array_equal(array, _pixels(_body({"id": f"tile-{index}"})))
        assert array.shape == (32, 48, 3) and array.dtype == np.uint16


def _expect_png_jpeg(result: Any, _: Any) -> None:
    png, jpeg = result
    np.testing.assert_array_equal(png, _pixels(_body({"id": "a", "format": "png"})))
    assert jpeg.shape == (32, 48, 3) and jpeg.dtype == np.uint8


def _expect_axes(result: Any, _: Any) -> None:
    assert result["planar.tiff"].shape == (4, 32, 40)
    np.testing.assert_array_equal(result["planar.tiff"], PLANAR)
    np.testing.assert_array_equal(result["pixel.tiff"], np.moveaxis(PIXEL, 0, -1))
    np.testing.assert_array_equal(result["single.tiff"], SINGLE)
    assert result["single.tiff"].dtype == np.float32


def _expect_pngs(result: Any, _: Any) -> None:
    np.testing.assert_array_equal(result[0], GRAY)
    np.testing.assert_array_equal(result[1], np.moveaxis(RGBA, 0, -1))


def _expect_catalog(result: Any, _: Any) -> None:
    collections, context, echo = result
    assert collections == COLLECTIONS and context == COLLECTIONS["context"]
    assert echo == {
        "content_type": "application/json",
        "body": {"bbox": [13.35, 45.77, 13.83, 46.13]},
    }


def _expect_refusal(result: Any, hub: Any) -> None:
    assert result == (
        f"Response from {hub.base_url}/files/list.json was expected to be a dictionary, "
        "but got <class 'list'>."
    )


def _expect_xml(result: Any, _: Any) -> None:
    root, names = result
    assert isinstance(root, ElementTree.Element) and root.tag == "WMS_Capabilities"
    assert names == ["WMS", "TRUE-COLOR", "NDVI"]


def _expect_text_raw_zip(result: Any, _: Any) -> None:
    notes, raw, archive, members = result
    assert notes == NOTES and raw == RAW
    assert isinstance(archive, io.BytesIO) and archive.getvalue() == FILES["archive.zip"][0]
    assert members == {"notes.txt": NOTES, "collections.json": json.dumps(COLLECTIONS).encode()}


def _expect_by_content_type(result: Any, _: Any) -> None:
    assert result[0] == COLLECTIONS
    np.testing.assert_array_equal(result[1], np.moveaxis(PIXEL, 0, -1))


def _expect_tar(result: Any, _: Any) -> None:
    (members,) = result
    assert list(members) == ["default.tif", "userdata.json"]
    np.testing.assert_array_equal(members["default.tif"], _pixels(_images("GTiff", 1)))
    assert members["userdata.json"] == {"id": "multi", "norm": [0.5, 2]}


def _expect_cached(result: Any, hub: Any) -> None:
    first, second, third, files, hashed = result
    assert_same(first, second)
    assert_same(first, third)
    assert files == [f"{hashed}/request.json", f"{hashed}/response.tiff"]
    assert hub.stats.process_requests == 2, "the second from the cache, the third downloaded"


def _expect_custom_filename(result: Any, _: Any) -> None:
    returned, content, listing = result
    assert returned == [None] and content == FILES["gray.png"][0] and listing == ["images"]


def _expect_response(result: Any, _: Any) -> None:
    content, status, response_type, decoded = result
    assert content == FILES["single.tiff"][0] and status == 200 and response_type == "tiff"
    np.testing.assert_array_equal(decoded, SINGLE)


def _expect_config(result: Any, hub: Any) -> None:
    data, values, shown, text, attempts = result
    assert data == [json.loads(_body({"id": "env", "format": "json"}))]
    assert values["sh_base_url"] == hub.base_url and values["max_download_attempts"] == 2
    assert (
        CLIENT_SECRET not in shown
        and CLIENT_SECRET not in text
        and CLIENT_SECRET not in str(values)
    )
    assert values["sh_client_secret"].endswith(CLIENT_SECRET[-4:]) and attempts == 2


def _expect_failures(result: Any, _: Any) -> None:
    data, runtime_warnings, raised = result
    assert data == [NOTES, None] and runtime_warnings == [True] and raised is True


def _expect_sessions(result: Any, hub: Any) -> None:
    assert result == (
        True,
        CLIENT_ID,
        ["Authorization"],
        [json.loads(_body({"id": "session", "format": "json"}))],
    )
    assert hub.stats.token_requests == 1


def _expect_out_of_requests(result: Any, hub: Any) -> None:
    assert result == "out of requests"
    assert hub.hits["/api/v1/busy"] == 3


EXPECTED: dict[str, Callable[[Any, Any], None]] = {
    "process_api_tiff": _expect_tiffs,
    "process_api_png_and_jpeg": _expect_png_jpeg,
    "tiff_axis_orders": _expect_axes,
    "png_shapes": _expect_pngs,
    "get_json_catalog": _expect_catalog,
    "get_json_dict_refuses_a_list": _expect_refusal,
    "get_xml_capabilities": _expect_xml,
    "text_raw_and_zip": _expect_text_raw_zip,
    "raw_request_decoded_by_content_type": _expect_by_content_type,
    "process_api_tar": _expect_tar,
    "cached_in_data_folder": _expect_cached,
    "custom_filename_and_no_return": _expect_custom_filename,
    "responses_without_decoding": _expect_response,
    "config_from_file_and_environment": _expect_config,
    "failures_raised_or_warned": _expect_failures,
    "sessions_cached_and_from_token": _expect_sessions,
    "max_retries_on_429": _expect_out_of_requests,
}


def test_every_snippet_has_an_expectation():
    assert set(EXPECTED) == set(SNIPPETS)


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_runs_with_rsgrpc(name, run_snippet, snippet_hub):
    result = run_snippet(name, "rsgrpc.download")
    EXPECTED[name](result, snippet_hub)


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_gives_what_sentinelhub_gives(name, run_snippet, snippet_hub):
    pytest.importorskip("sentinelhub")
    from sentinelhub import SentinelHubDownloadClient as TheirClient

    TheirClient.clear_cache()
    try:
        theirs = run_snippet(name, "sentinelhub")
    finally:
        TheirClient.clear_cache()
    snippet_hub.reset_stats()
    snippet_hub.hits.clear()
    ours = run_snippet(name, "rsgrpc.download")
    assert_same(ours, theirs)
