"""BandSetService: create, read, list, update and remove the band sets of a session.

A band set lives in its session's catalog (`rsgrpc.engine.bandsets`) and is seen only by
who sees the session: another identity's call is NOT_FOUND, as for the session itself.
Building a band set opens and describes its files: that runs in the server's pool of
blocking threads, never on its event loop. CreateBandSet with `validate_only` builds a band
set by the same rules and returns it without keeping it: a band set outside the catalog,
which the client keeps (Remotior's ``rs.bandset.create``).
"""

from __future__ import annotations

import asyncio
import re

from google.protobuf import empty_pb2

from rsgrpc.engine import bandsets
from rsgrpc.engine.errors import InvalidArgumentError, NotFoundError
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.session import Session, SessionRegistry
from rsgrpc.server.auth import current_caller
from rsgrpc.server.status import reports_errors
from rsgrpc.v1 import bandset_pb2, bandset_pb2_grpc

_NAME = re.compile(r"^(sessions/[^/]+)/bandsets/([0-9]{1,9})$")
_UPDATABLE = ("display_name", "date", "root_directory", "bands", "sensor", "current", "box")
_MAX_PAGE = 1000


def _geo_transform(transform: tuple[float, ...]) -> list[float]:
    """GDAL's geotransform of a rasterio affine (a, b, c, d, e, f)."""
    a, b, c, d, e, f = transform
    return [c, a, b, f, d, e]


def band_to_proto(band: bandsets.Band, number: int) -> bandset_pb2.Band:
    message = bandset_pb2.Band(
        path=band.path,
        raster_band=band.raster_band,
        name=band.name,
        wavelength=band.wavelength,
        wavelength_unit=band.wavelength_unit,
        multiplicative_factor=band.multiplicative_factor,
        additive_factor=band.additive_factor,
        date=band.date,
        band_number=number,
        data_path=band.data_path,
        width=band.width,
        height=band.height,
        crs=band.crs,
        data_type=band.data_type,
        geo_transform=_geo_transform(band.transform),
    )
    if band.nodata is not None:
        message.nodata = band.nodata
    return message


def bandset_to_proto(
    session: Session, number: int, bandset: bandsets.BandSet, current: bool
) -> bandset_pb2.BandSet:
    """The band set as the API gives it; number 0 is a band set outside the catalog (no
    resource name)."""
    return bandset_pb2.BandSet(
        name=f"{session.name}/bandsets/{number}" if number else "",
        display_name=bandset.display_name,
        date=bandset.date,
        root_directory=bandset.root_directory,
        bands=[band_to_proto(band, i) for i, band in enumerate(bandset.bands, start=1)],
        sensor=bandset.sensor,
        current=current,
        bandset_number=number,
        box=None
        if bandset.box is None
        else bandset_pb2.Extent(**dict(zip(_EDGES, bandset.box, strict=True))),
    )


_EDGES = ("left", "top", "right", "bottom")


def box_of(given: bandset_pb2.BandSet, field: str = "") -> tuple[float, ...] | None:
    """The band set's box, checked; None when the message has none."""
    if not given.HasField("box"):
        return None
    return bandsets.check_box(*(getattr(given.box, e) for e in _EDGES), f"{field}box")


def band_specs(bands) -> list[bandsets.BandSpec]:
    """The bands of a BandSet message as the client describes them, before any file is
    read; RESOURCE_EXHAUSTED for more than a band set holds."""
    bandsets.check_band_count(len(bands))  # before reading any of them
    return [
        bandsets.BandSpec(
            path=b.path,
            raster_band=b.raster_band,
            name=b.name,
            wavelength=b.wavelength if b.HasField("wavelength") else None,
            wavelength_unit=b.wavelength_unit,
            multiplicative_factor=(
                b.multiplicative_factor if b.HasField("multiplicative_factor") else None
            ),
            additive_factor=b.additive_factor if b.HasField("additive_factor") else None,
            date=b.date,
        )
        for b in bands
    ]


def build_bandset(
    data_root: DataRoot,
    given: bandset_pb2.BandSet,
    specs: list[bandsets.BandSpec],
    *,
    sensor: str = "",
    sort: bool = False,
    field: str = "",
) -> bandsets.BandSet:
    """The band set `given` describes, its files confined, opened and described here (the
    sizes and CRS the message gives are not read); with `sensor` (a full name), its
    wavelengths; with `sort`, its bands by wavelength, as Remotior creates them. Errors
    name the message's fields after `field` (``inline_bandset.``, for one in a request)."""
    root_directory = bandsets.check_text(given.root_directory, f"{field}root_directory")
    bands = bandsets.build_bands(data_root, specs, root_directory, bands_field=f"{field}bands")
    if sensor:
        bands = bandsets.apply_sensor(bands, sensor)
    elif sort:
        bands = bandsets.sort_by_wavelength(bands)
    return bandsets.BandSet(
        display_name=bandsets.check_text(given.display_name, f"{field}display_name")
        or bandsets.default_display_name(bands),
        date=bandsets.check_date(given.date, f"{field}date"),
        root_directory=root_directory,
        bands=bands,
        sensor=sensor,
        box=box_of(given, field),
    )


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    if page_size < 0:
        raise InvalidArgumentError("page_size must not be negative")
    try:
        start = int(page_token or 0)
        if start < 0:
            raise ValueError
    except ValueError as exc:
        raise InvalidArgumentError("page_token is not valid") from exc
    return start, min(page_size or _MAX_PAGE, _MAX_PAGE)


def _populated(message, field: str) -> bool:
    if field == "bands":
        return len(message.bands) > 0
    if field == "box":
        return message.HasField("box")
    return bool(getattr(message, field))


class BandSetServicer(bandset_pb2_grpc.BandSetServiceServicer):
    def __init__(self, registry: SessionRegistry, data_root: DataRoot) -> None:
        self._registry = registry
        self._data_root = data_root

    def _session(self, name: str) -> Session:
        return self._registry.get(name, owner=current_caller().owner)

    def _bandset(self, name: str) -> tuple[Session, int]:
        """The session and number a band set's name gives; NOT_FOUND for another identity's
        session, as if it did not exist."""
        match = _NAME.match(name)
        if match is None:
            raise InvalidArgumentError(
                f"band set name {name[:200]!r} is not sessions/{{session}}/bandsets/{{number}}",
                metadata={"field": "name"},
            )
        number = int(match.group(2))
        if number < 1:
            raise NotFoundError(f"band set {name!r} does not exist; numbers start at 1")
        return self._session(match.group(1)), number

    @reports_errors
    async def CreateBandSet(self, request, context):
        session = self._session(request.parent)
        given = request.bandset
        if request.bandset_number < 0:
            raise InvalidArgumentError("bandset_number must not be negative")
        sensor = bandsets.sensor_name(given.sensor) if given.sensor else ""
        if request.folder and given.bands:
            raise InvalidArgumentError("give either folder or bandset.bands, not both")
        if request.name_filter and not request.folder:
            raise InvalidArgumentError("name_filter applies to a folder: give folder too")
        specs = band_specs(given.bands)

        def build() -> bandsets.BandSet:
            listed = specs
            if request.folder:
                paths = bandsets.list_folder(
                    self._data_root, request.folder, request.name_filter, given.root_directory
                )
                listed = [bandsets.BandSpec(path=path) for path in paths]
            return build_bandset(self._data_root, given, listed, sensor=sensor, sort=True)

        bandset = await asyncio.to_thread(build)
        session.touch()
        if request.validate_only:  # a band set outside the catalog, Remotior's BandSet.create
            return bandset_to_proto(session, 0, bandset, False)
        number = session.bandsets.add(
            bandset, request.bandset_number, insert=request.insert, current=given.current
        )
        _, current = session.bandsets.get(number)
        session.logger.info("band set %d created: %d bands", number, len(bandset.bands))
        return bandset_to_proto(session, number, bandset, current)

    @reports_errors
    async def GetBandSet(self, request, context):
        session, number = self._bandset(request.name)
        bandset, current = session.bandsets.get(number)
        return bandset_to_proto(session, number, bandset, current)

    @reports_errors
    async def ListBandSets(self, request, context):
        session = self._session(request.parent)
        start, size = _page(request.page_size, request.page_token)
        every, current = session.bandsets.list()
        page = every[start : start + size]
        token = str(start + size) if start + size < len(every) else ""
        return bandset_pb2.ListBandSetsResponse(
            bandsets=[
                bandset_to_proto(session, number, bandset, number == current)
                for number, bandset in enumerate(page, start=start + 1)
            ],
            next_page_token=token,
        )

    @reports_errors
    async def UpdateBandSet(self, request, context):
        given = request.bandset
        session, number = self._bandset(given.name)
        # AIP-134: without a mask, every field the client populated is updated.
        paths = list(request.update_mask.paths) or [
            path for path in _UPDATABLE if _populated(given, path)
        ]
        unknown = sorted(set(paths) - set(_UPDATABLE))
        if unknown:
            raise InvalidArgumentError(
                f"update_mask paths {unknown} cannot be updated; use {list(_UPDATABLE)}"
            )
        sensor = bandsets.sensor_name(given.sensor) if "sensor" in paths else ""
        specs = band_specs(given.bands) if "bands" in paths else None
        previous, _ = session.bandsets.get(number)

        def build() -> bandsets.BandSet:
            merged = bandset_pb2.BandSet(
                display_name=given.display_name
                if "display_name" in paths
                else previous.display_name,
                date=given.date if "date" in paths else previous.date,
                root_directory=given.root_directory
                if "root_directory" in paths
                else previous.root_directory,
            )
            if specs is None and "root_directory" not in paths:
                bands = previous.bands  # checked when they were set
            else:
                kept = specs if specs is not None else [_spec_of(b) for b in previous.bands]
                bands = bandsets.build_bands(self._data_root, kept, merged.root_directory)
            if sensor:
                bands = bandsets.apply_sensor(bands, sensor)
            return bandsets.BandSet(
                display_name=bandsets.check_text(merged.display_name, "display_name")
                or bandsets.default_display_name(bands),
                date=bandsets.check_date(merged.date, "date"),
                root_directory=bandsets.check_text(merged.root_directory, "root_directory"),
                bands=bands,
                sensor=sensor or (previous.sensor if specs is None else ""),
                box=box_of(given) if "box" in paths else previous.box,
            )

        bandset = await asyncio.to_thread(build)
        make_current = "current" in paths and given.current
        session.bandsets.replace(number, previous, bandset, current=make_current)
        session.touch()
        _, current = session.bandsets.get(number)
        return bandset_to_proto(session, number, bandset, current)

    @reports_errors
    async def DeleteBandSet(self, request, context):
        session, number = self._bandset(request.name)
        session.bandsets.delete(number)
        session.touch()
        return empty_pb2.Empty()


def _spec_of(band: bandsets.Band) -> bandsets.BandSpec:
    """A band as it was given, to be checked again (under a new root directory)."""
    return bandsets.BandSpec(
        path=band.path,
        raster_band=band.raster_band,
        name=band.name,
        wavelength=band.wavelength,
        wavelength_unit=band.wavelength_unit,
        multiplicative_factor=band.multiplicative_factor,
        additive_factor=band.additive_factor,
        date=band.date,
    )
