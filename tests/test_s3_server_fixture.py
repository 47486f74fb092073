"""The `s3` fixture: moto's S3 server, reached by boto3 and by GDAL through `/vsis3/`."""

from __future__ import annotations

import urllib.parse

import numpy as np
import rasterio
from rasterio.session import AWSSession

from tests.conftest import CRS, TRANSFORM, write_geotiff
from tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY


def test_objects_put_in_a_bucket_come_back(s3):
    bucket = s3.bucket("round-trip")
    client = s3.client()
    client.put_object(Bucket=bucket, Key="folder/object.bin", Body=b"\x00rsgrpc\xff")
    got = client.get_object(Bucket=bucket, Key="folder/object.bin")
    assert got["Body"].read() == b"\x00rsgrpc\xff"
    assert [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "folder/object.bin"
    ]


def test_gdal_reads_a_geotiff_from_a_bucket(s3, tmp_path):
    array = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    path = write_geotiff(tmp_path / "small.tif", array, nodata=0)
    bucket = s3.bucket("geotiffs")
    s3.client().upload_file(str(path), bucket, "scenes/small.tif")
    # rasterio takes credentials only in a session. Path-style requests over HTTP; the extension
    # list overrides the one that keeps rsgrpc's GDAL off the network (in this process's
    # environment).
    session = AWSSession(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name=REGION,
        endpoint_url=urllib.parse.urlsplit(s3.endpoint).netloc,
    )
    options = {
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
    }
    with (
        rasterio.Env(session, **options),
        rasterio.open(f"/vsis3/{bucket}/scenes/small.tif") as dataset,
    ):
        assert dataset.crs == CRS
        assert dataset.transform == TRANSFORM
        assert dataset.nodata == 0
        np.testing.assert_array_equal(dataset.read(1), array)
