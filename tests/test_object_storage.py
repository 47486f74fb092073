"""A data root in S3-compatible object storage (moto's S3 server on 127.0.0.1), through a
real gRPC channel: inputs read by range from objects, outputs uploaded whole, paths
confined to the root's prefix whichever way a client writes them."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio

from rsgrpc.cli import build_parser
from rsgrpc.client import Session
from rsgrpc.download import forget_limiters
from rsgrpc.engine import partial_output as partial_output_module
from rsgrpc.engine.errors import AlreadyExistsError
from rsgrpc.engine.object_store import ObjectRoot
from rsgrpc.engine.partial_output import partial_output
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.root_probe import mark_roots, unseen_roots
from rsgrpc.server.config import from_arguments
from rsgrpc.v1 import (
    bandset_pb2,
    bandset_pb2_grpc,
    download_pb2,
    download_pb2_grpc,
    raster_pb2,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    make_config,
    serving,
    watch_to_response,
    write_geotiff,
)
from tests.download.fake_sentinelhub import PUBLIC_PATH, FakeSentinelHub

BUCKET = "scenes"
PREFIX = "team/a"
ROOT = f"s3://{BUCKET}/{PREFIX}"
SIZE = 1500  # several tiles in a session of 600 MiB
NODATA = 0


@pytest.fixture(scope="module")
def storage(s3, tmp_path_factory):
    """The bucket, with two bands and speckled classes under the root's prefix, and an
    object beside the prefix that no client path may reach."""
    folder = tmp_path_factory.mktemp("objects")
    s3.bucket(BUCKET)
    client = s3.client()
    rng = np.random.default_rng(11)
    red = rng.integers(1, 4000, (SIZE, SIZE), dtype=np.uint16)
    nir = rng.integers(1, 4000, (SIZE, SIZE), dtype=np.uint16)
    classes = np.kron(rng.integers(1, 5, (SIZE // 20, SIZE // 20)), np.ones((20, 20)))
    classes = classes.astype(np.uint8)
    classes[rng.random(classes.shape) < 0.03] = 7
    for name, array in (("red", red), ("nir", nir), ("classes", classes)):
        local = write_geotiff(folder / f"{name}.tif", array, nodata=NODATA)
        client.upload_file(str(local), BUCKET, f"{PREFIX}/in/{name}.tif")
    secret = write_geotiff(folder / "secret.tif", np.full((16, 16), 42, np.uint16))
    client.upload_file(str(secret), BUCKET, "team/secret.tif")
    client.upload_file(str(secret), BUCKET, "team/ab/secret.tif")
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/in/notes.tif", Body=b"not a raster")
    return {"red": red, "nir": nir, "classes": classes, "client": client}


@pytest.fixture(scope="module")
def hub():
    with FakeSentinelHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(s3, storage, hub, tmp_path_factory):
    """A server whose primary root is the object-storage prefix and whose second root is a
    local folder, with a download deployment of the fake hub; the storage's credentials
    and endpoint come from the environment."""
    base = tmp_path_factory.mktemp("server")
    deployments = base / "deployments.toml"
    deployments.write_text(
        f'cache_dir = "cache"\n\n[deployments.public]\nbase_url = "{hub.base_url}"\n'
    )
    forget_limiters()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3.env.items():
            patch.setenv(key, value)
        config = make_config(
            base,
            data_root=ROOT,
            other_data_roots=(base / "local",),
            deployments=str(deployments),
        )
        with serving(config) as (running, channel):
            yield running, channel, base
    forget_limiters()


@pytest.fixture(scope="module")
def session(server) -> str:
    created = session_pb2_grpc.SessionServiceStub(server[1]).CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=2, available_ram_mib=600)
        )
    )
    return created.name


def _object(storage, key: str) -> np.ndarray:
    body = storage["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with rasterio.MemoryFile(body) as memory, memory.open() as ds:
        return ds.read(1)


def _keys(storage, prefix: str = "") -> list[str]:
    listed = storage["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", ()))


def _ndvi(raster_stub, session: str, red: str, nir: str, output: str, *, overwrite=False):
    return raster_stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression="(b - a) / (b + a)",
            inputs=[
                raster_pb2.RasterInput(name="a", path=red),
                raster_pb2.RasterInput(name="b", path=nir),
            ],
            output_path=output,
            overwrite=overwrite,
        )
    )


def _expected_ndvi(storage) -> np.ndarray:
    red, nir = storage["red"].astype(np.float32), storage["nir"].astype(np.float32)
    return (nir - red) / (nir + red)


@pytest.mark.parametrize(
    "red, nir, output",
    [
        ("in/red.tif", "in/nir.tif", "out/ndvi.tif"),  # relative: the primary root
        (f"{ROOT}/in/red.tif", f"{ROOT}/in/nir.tif", f"{ROOT}/out/ndvi-url.tif"),
        (
            f"/vsis3/{BUCKET}/{PREFIX}/in/red.tif",
            f"/vsis3/{BUCKET}/{PREFIX}/in/nir.tif",
            f"/vsis3/{BUCKET}/{PREFIX}/out//ndvi-gdal.tif",
        ),
    ],
    ids=["relative", "s3-url", "gdal-name"],
)
def test_band_calc_reads_objects_and_uploads_its_output(
    server, session, raster_stub, storage, red, nir, output
):
    updates, response = watch_to_response(
        server[1], _ndvi(raster_stub, session, red, nir, output), raster_pb2.BandCalcResponse
    )
    assert response.output_path == output  # as the client wrote it
    key = f"{PREFIX}/out/{output.rsplit('/', 1)[1]}"
    np.testing.assert_allclose(_object(storage, key), _expected_ndvi(storage), rtol=1e-6)
    assert not [k for k in _keys(storage) if "partial" in k]  # staged locally, never here


def test_a_virtual_output_in_object_storage_is_read_back_as_an_input(
    server, session, raster_stub, storage
):
    """A `.vrt` output is two objects, the VRT and its GeoTIFF; a VRT input is parsed by
    rsgrpc and its source read from the store."""
    operation = _ndvi(raster_stub, session, "in/red.tif", "in/nir.tif", "virtual/ndvi.vrt")
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    assert len(_keys(storage, f"{PREFIX}/virtual/")) == 2
    operation = raster_stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression="a * 2",
            inputs=[raster_pb2.RasterInput(name="a", path=f"{ROOT}/virtual/ndvi.vrt")],
            output_path="virtual/doubled.tif",
        )
    )
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    doubled = _object(storage, f"{PREFIX}/virtual/doubled.tif")
    np.testing.assert_allclose(doubled, 2 * _expected_ndvi(storage), rtol=1e-6)


def test_a_sieve_on_objects_equals_the_same_sieve_on_a_local_file(
    server, session, raster_stub, storage
):
    local = server[2] / "local"
    write_geotiff(local / "classes.tif", storage["classes"], nodata=NODATA)

    def sieve(source: str, output: str) -> None:
        watch_to_response(
            server[1],
            raster_stub.Sieve(
                raster_pb2.SieveRequest(
                    session=session,
                    inputs=[raster_pb2.RasterBand(path=source)],
                    size=12,
                    output=raster_pb2.ToolOutput(path=output, overwrite=True),
                )
            ),
            raster_pb2.SieveResponse,
        )

    sieve("in/classes.tif", "sieved/classes.tif")
    sieve(f"{local}/classes.tif", f"{local}/sieved.tif")
    from_objects = _object(storage, f"{PREFIX}/sieved/classes.tif")
    with rasterio.open(local / "sieved.tif") as ds:
        np.testing.assert_array_equal(from_objects, ds.read(1))
    assert np.count_nonzero(from_objects != storage["classes"]) > 0


@pytest.mark.parametrize(
    "path",
    [
        f"s3://{BUCKET}/team/secret.tif",  # beside the prefix
        f"s3://{BUCKET}/team/ab/secret.tif",  # a prefix that starts like the root's
        f"{ROOT}/../secret.tif",
        f"/vsis3/{BUCKET}/team/secret.tif",
        f"/vsis3/{BUCKET}/{PREFIX}/../secret.tif",
        f"s3://other-bucket/{PREFIX}/in/red.tif",
        "/vsicurl/http://127.0.0.1/in/red.tif",
        "../secret.tif",
    ],
)
def test_nothing_outside_the_prefix_is_read(server, session, raster_stub, path):
    with pytest.raises(grpc.RpcError) as caught:
        _ndvi(raster_stub, session, path, "in/nir.tif", "out/never.tif")
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, caught.value.details()
    assert "42" not in caught.value.details()


@pytest.mark.parametrize(
    "path",
    [
        "s3://",
        "s3:/scenes/team/a/in/red.tif",  # one '/': a relative path, not found under the root
        f"s3://{BUCKET}",
        ROOT,
        f"{ROOT}/",
        f"{ROOT}/in/",
        f"{ROOT}/in/red.tif?x-id=GetObject",
        f"{ROOT}/in/red.tif#fragment",
        f"/vsis3/{BUCKET}/{PREFIX}",
        f"/vsis3_streaming/{BUCKET}/{PREFIX}/in/red.tif",
        f"{ROOT}/in/ red.tif",
        f"{ROOT}/in/\u00e9t\u00e9.tif",
        f"{ROOT}/in/red.tif/x.tif",
    ],
)
def test_odd_object_paths_are_the_clients_mistake(server, session, raster_stub, path):
    with pytest.raises(grpc.RpcError) as caught:
        _ndvi(raster_stub, session, path, "in/nir.tif", "out/never.tif")
    assert caught.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
    ), caught.value.details()


@pytest.mark.parametrize(
    "path, code",
    [
        ("in/missing.tif", grpc.StatusCode.NOT_FOUND),
        ("in/notes.tif", grpc.StatusCode.INVALID_ARGUMENT),  # an object that is not a GeoTIFF
        ("/".join(["in"] * 400) + "/x.tif", grpc.StatusCode.INVALID_ARGUMENT),  # key > 1 KiB
    ],
    ids=["missing", "not-a-geotiff", "key-too-long"],
)
def test_a_missing_or_foreign_object_is_the_clients_mistake(
    server, session, raster_stub, path, code
):
    with pytest.raises(grpc.RpcError) as caught:
        _ndvi(raster_stub, session, path, "in/nir.tif", "out/never.tif")
    assert caught.value.code() is code, caught.value.details()
    assert BUCKET not in caught.value.details().replace(path, "")


def test_an_existing_object_is_kept_unless_overwrite_is_set(server, session, raster_stub, storage):
    storage["client"].put_object(Bucket=BUCKET, Key=f"{PREFIX}/out/kept.tif", Body=b"mine")
    with pytest.raises(grpc.RpcError) as caught:
        _ndvi(raster_stub, session, "in/red.tif", "in/nir.tif", "out/kept.tif")
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    body = storage["client"].get_object(Bucket=BUCKET, Key=f"{PREFIX}/out/kept.tif")["Body"]
    assert body.read() == b"mine"
    operation = _ndvi(
        raster_stub, session, "in/red.tif", "in/nir.tif", "out/kept.tif", overwrite=True
    )
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    np.testing.assert_allclose(
        _object(storage, f"{PREFIX}/out/kept.tif"), _expected_ndvi(storage), rtol=1e-6
    )


def test_an_output_appears_whole_or_not_at_all(server, storage, monkeypatch, tmp_path):
    """An object output is staged locally and uploaded only when published: one left
    without publishing leaves nothing, one made meanwhile is kept (overwrite off), and an
    output of several files that cannot be published whole is taken back."""
    monkeypatch.setattr(partial_output_module, "staging_folder", lambda: tmp_path)
    root = DataRoot.at(ROOT)

    with partial_output(root.path("out/left.tif"), overwrite=False) as left:
        left.write(b"half")
        assert len(list(tmp_path.iterdir())) == 1
    assert not list(tmp_path.iterdir())
    assert f"{PREFIX}/out/left.tif" not in _keys(storage)

    raced = root.path("out/raced.tif")
    with partial_output(raced, overwrite=False) as output:
        output.write(b"ours")
        storage["client"].put_object(Bucket=BUCKET, Key=f"{PREFIX}/out/raced.tif", Body=b"theirs")
        with pytest.raises(AlreadyExistsError):
            output.publish()
    assert not list(tmp_path.iterdir())
    body = storage["client"].get_object(Bucket=BUCKET, Key=f"{PREFIX}/out/raced.tif")["Body"]
    assert body.read() == b"theirs"

    with partial_output(root.path("out/taken-back.tif"), overwrite=True) as output:
        output.write(b"whole")
        assert output.publish() == 5
        assert f"{PREFIX}/out/taken-back.tif" in _keys(storage)
        output.unpublish()
    assert f"{PREFIX}/out/taken-back.tif" not in _keys(storage)
    assert not list(tmp_path.iterdir())


def test_an_unreachable_storage_is_unavailable_and_names_no_endpoint(
    server, session, raster_stub, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on 9
    with pytest.raises(grpc.RpcError) as caught:
        _ndvi(raster_stub, session, "in/red.tif", "in/nir.tif", "out/never.tif")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "127.0.0.1" not in caught.value.details()


def test_an_object_root_is_parsed_strictly():
    assert ObjectRoot.parse("s3://bucket/a/b/") == ObjectRoot("bucket", "a/b")
    assert ObjectRoot.parse("/vsis3/bucket/a/b") == ObjectRoot("bucket", "a/b")
    assert str(ObjectRoot.parse("s3://bucket")) == "s3://bucket"
    for bad in ("s3://B/x", "s3://b/x", "s3://bucket/../x", "gs://bucket/x", "s3://bucket?x"):
        with pytest.raises(ValueError):
            ObjectRoot.parse(bad)


def test_object_roots_are_given_like_folders_by_flag_and_by_environment(monkeypatch):
    parser = build_parser()
    flags = ["serve", "--data-root", "data=/srv/data", "--data-root", "scenes=s3://b-1/x/y"]
    config = from_arguments(parser.parse_args(flags))
    assert config.data_roots == (Path("/srv/data"), "s3://b-1/x/y")
    assert config.data_root_names == ("data", "scenes")
    # ':' separates the variable's roots, and never splits a URL.
    monkeypatch.setenv("RSGRPC_DATA_ROOT", "/srv/data:scenes=s3://b-1/x:s3://b-2")
    config = from_arguments(parser.parse_args(["serve"]))
    assert config.data_roots == (Path("/srv/data"), "s3://b-1/x", "s3://b-2")
    assert config.data_root_names == ("", "scenes", "")
    roots = DataRoot.at(*config.data_roots[1:], names=config.data_root_names[1:])
    assert roots.named == {"scenes": ObjectRoot("b-1", "x"), "data2": ObjectRoot("b-2")}
    with pytest.raises(ValueError):
        DataRoot.at("s3://Not_A_Bucket/x")


def test_a_band_set_lists_the_geotiffs_of_a_folder_in_object_storage(server, session):
    stub = bandset_pb2_grpc.BandSetServiceStub(server[1])
    created = stub.CreateBandSet(
        bandset_pb2.CreateBandSetRequest(parent=session, folder=f"{ROOT}/in", name_filter="r")
    )
    # notes.tif is an object named .tif, not a GeoTIFF: listed by name, refused on reading.
    assert [band.path for band in created.bands] == [f"{ROOT}/in/nir.tif", f"{ROOT}/in/red.tif"]
    assert {band.width for band in created.bands} == {SIZE}


def test_a_remotior_script_with_its_own_folders_runs_on_the_bucket(server, storage):
    """`path_map` sends a script's folder to the bucket's prefix: the script, written for
    Remotior Sensus with its own absolute paths, runs with its import changed."""
    folder = "/home/analyst/scenes"
    rs = Session(2, 2048, channel=server[1], path_map={folder: f"{ROOT}/"})
    try:
        out = rs.band_calc(
            '("nir" - "red") / ("nir" + "red")',
            f"{folder}/script/ndvi.tif",
            [[f"{folder}/in/nir.tif", "nir"], [f"{folder}/in/red.tif", "red"]],
        )
        assert out.check, out.grpc
        assert out.path == f"{folder}/script/ndvi.tif"
    finally:
        rs.close()
    np.testing.assert_allclose(
        _object(storage, f"{PREFIX}/script/ndvi.tif"), _expected_ndvi(storage), rtol=1e-6
    )


def test_a_closed_sessions_log_is_kept_in_the_bucket(server, storage):
    stub = session_pb2_grpc.SessionServiceStub(server[1])
    created = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=1, available_ram_mib=600)
        )
    )
    stub.DeleteSession(
        session_pb2.DeleteSessionRequest(name=created.name, log_path=f"{ROOT}/logs/session.log")
    )
    body = storage["client"].get_object(Bucket=BUCKET, Key=f"{PREFIX}/logs/session.log")["Body"]
    log = body.read().decode()
    assert "session started" in log and "session closed" in log


def test_downloads_are_saved_as_objects(server, session, storage, hub):
    stub = download_pb2_grpc.DownloadServiceStub(server[1])
    outputs = ["dl/one.tif", f"{ROOT}/dl/two.tif"]
    items = [
        download_pb2.DownloadItem(
            uri=PUBLIC_PATH.lstrip("/"),  # answered without a token
            body_json=json.dumps({"id": f"object-{i}", "format": "tiff"}),
            output_path=output,
        )
        for i, output in enumerate(outputs)
    ]
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session, deployment="public", items=items)
    )
    *_, response = watch_to_response(server[1], operation, download_pb2.DownloadResponse)
    assert [r.output_path for r in response.results] == outputs
    for i, name in enumerate(("one", "two")):
        body = storage["client"].get_object(Bucket=BUCKET, Key=f"{PREFIX}/dl/{name}.tif")
        assert body["Body"].read() == hub.sent[f"object-{i}"]


def test_an_object_replaced_between_jobs_is_read_afresh(server, raster_stub, storage, tmp_path):
    """A worker keeps its inputs open between tiles and jobs; each read compares the
    object's version, so a replaced object's new pixels are read, not the old ones or
    GDAL's cache of them (one worker, the same size of object)."""
    session = (
        session_pb2_grpc.SessionServiceStub(server[1])
        .CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=1, available_ram_mib=600)
            )
        )
        .name
    )
    key = f"{PREFIX}/swap/band.tif"
    outputs = []
    for value in (3, 5):
        local = write_geotiff(tmp_path / f"{value}.tif", np.full((64, 64), value, np.uint16))
        storage["client"].upload_file(str(local), BUCKET, key)
        operation = raster_stub.BandCalc(
            raster_pb2.BandCalcRequest(
                session=session,
                expression="a * 2",
                inputs=[raster_pb2.RasterInput(name="a", path="swap/band.tif")],
                output_path=f"swap/doubled-{value}.tif",
            )
        )
        watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
        outputs.append(_object(storage, f"{PREFIX}/swap/doubled-{value}.tif"))
    assert [float(o.max()) for o in outputs] == [6.0, 10.0]


def test_an_object_root_has_one_marker_that_every_server_reads(server, storage):
    """The marker of `rsgrpc.engine.root_probe` is an object made once (a conditional
    write); a second server, or a worker, reads the same token."""
    first = mark_roots(DataRoot.at(ROOT))
    again = mark_roots(DataRoot.at(f"/vsis3/{BUCKET}/{PREFIX}"))
    assert first.tokens == again.tokens and len(first.tokens["data"]) == 32
    body = storage["client"].get_object(Bucket=BUCKET, Key=f"{PREFIX}/.rsgrpc-root")["Body"]
    assert body.read().decode().strip() == first.tokens["data"]
    assert unseen_roots(first) == []
