"""BandSets: a session's numbered catalog of ordered band lists, as Remotior Sensus'
`BandSetCatalog` keeps them.

A band set is immutable once built (`BandSet`, `Band`); the catalog swaps whole band sets
under its lock, so that a reader always sees one consistent band set. Building one opens
and describes every band's file as any input is checked (`raster_io.describe`), outside
the lock: the catalog's own work is only list edits.

Numbers start at 1 and stay contiguous. As in Remotior, the catalog always holds at least
one band set: a new catalog holds one empty band set, and removing the last one leaves an
empty one.
"""

from __future__ import annotations

import datetime
import math
import os
import posixpath
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from rsgrpc.engine.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from rsgrpc.engine.paths import DataPath, DataRoot, tidy_path
from rsgrpc.engine.raster_io import RasterInfo, check_same_grid, describe

# Bounds of one session's catalog; read at each call, so that a deployment (or a test) may
# change them.
MAX_BANDSETS = 1000
MAX_BANDS = 10_000

NO_UNIT = "band number"
MICROMETRES = "µm (1 E-6m)"
NANOMETRES = "nm (1 E-9m)"
UNITS = (NO_UNIT, MICROMETRES, NANOMETRES)
NO_SATELLITE = "Band order"
_TIFF_SUFFIXES = (".tif", ".tiff")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_TEXT = 1024


@dataclass(frozen=True)
class Sensor:
    """Center wavelengths of a sensor's bands, with the names its files end with."""

    wavelengths: tuple[float, ...]
    unit: str
    band_names: tuple[str, ...]


# Remotior's sensors (its `configurations.satellites`), in the order it matches a partial
# name against them (`sat_band_list`): "Landsat 8" is first found in the Landsat 8/9 raw
# bands there, as here; a sensor's full name is matched first.
SENSORS: dict[str, Sensor] = {
    "ASTER [bands 1, 2, 3N, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]": Sensor(
        (0.56, 0.66, 0.81, 1.65, 2.165, 2.205, 2.26, 2.33, 2.395, 8.3, 8.65, 9.1, 10.6, 11.3),
        MICROMETRES,
        ("01", "02", "3N", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14"),
    ),
    "GeoEye-1 [bands 1, 2, 3, 4]": Sensor(
        (0.48, 0.545, 0.6725, 0.85), MICROMETRES, ("01", "02", "03", "04")
    ),
    "GOES [bands 1, 2, 3, 4, 5, 6]": Sensor(
        (0.47, 0.64, 0.87, 1.38, 1.61, 2.25),
        MICROMETRES,
        ("01", "02", "03", "04", "05", "06"),
    ),
    "Landsat 8/9 raw [bands 1, 2, 3, 4, 5, 6, 7, 8, 9 , 10, 11]": Sensor(
        (0.44, 0.48, 0.56, 0.59, 0.655, 0.865, 1.37, 1.61, 2.2, 10.895, 12.005),
        MICROMETRES,
        ("1", "2", "3", "8", "4", "5", "9", "6", "7", "10", "11"),
    ),
    "Landsat 9 OLI [bands 1, 2, 3, 4, 5, 6, 7]": Sensor(
        (0.44, 0.48, 0.56, 0.655, 0.865, 1.61, 2.2),
        MICROMETRES,
        ("1", "2", "3", "4", "5", "6", "7"),
    ),
    "Landsat 8 OLI [bands 1, 2, 3, 4, 5, 6, 7]": Sensor(
        (0.44, 0.48, 0.56, 0.655, 0.865, 1.61, 2.2),
        MICROMETRES,
        ("1", "2", "3", "4", "5", "6", "7"),
    ),
    "Landsat 7 ETM+ [bands 1, 2, 3, 4, 5, 7]": Sensor(
        (0.485, 0.56, 0.66, 0.835, 1.65, 2.22), MICROMETRES, ("1", "2", "3", "4", "5", "7")
    ),
    "Landsat 4-5 TM [bands 1, 2, 3, 4, 5, 7]": Sensor(
        (0.485, 0.56, 0.66, 0.83, 1.65, 2.215), MICROMETRES, ("1", "2", "3", "4", "5", "7")
    ),
    "Landsat 1-3 MSS [bands 4, 5, 6, 7]": Sensor(
        (0.55, 0.65, 0.75, 0.95), MICROMETRES, ("4", "5", "6", "7")
    ),
    "MODIS [bands 3, 4, 1, 2, 5, 6, 7]": Sensor(
        (0.469, 0.555, 0.645, 0.858, 1.24, 1.64, 2.13),
        MICROMETRES,
        ("03", "04", "01", "02", "05", "06", "07"),
    ),
    "MODIS [bands 1, 2]": Sensor((0.645, 0.858), MICROMETRES, ("01", "02")),
    "Pleiades [bands 1, 2, 3, 4]": Sensor(
        (0.49, 0.56, 0.65, 0.84), MICROMETRES, ("01", "02", "03", "04")
    ),
    "QuickBird [bands 1, 2, 3, 4]": Sensor(
        (0.4875, 0.543, 0.65, 0.8165), MICROMETRES, ("01", "02", "03", "04")
    ),
    "RapidEye [bands 1, 2, 3, 4, 5]": Sensor(
        (0.475, 0.555, 0.6575, 0.71, 0.805), MICROMETRES, ("01", "02", "03", "04", "05")
    ),
    "Sentinel-2 [bands 1, 2, 3, 4, 5, 6, 7, 8, 8A, 9, 10, 11, 12]": Sensor(
        (0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.375, 1.61, 2.19),
        MICROMETRES,
        ("01", "02", "03", "04", "05", "06", "07", "08", "8A", "09", "10", "11", "12"),
    ),
    "Sentinel-3 [bands 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, "
    "19, 20, 21]": Sensor(
        (
            0.4,
            0.4125,
            0.4425,
            0.49,
            0.51,
            0.56,
            0.62,
            0.665,
            0.67375,
            0.68125,
            0.70875,
            0.75375,
            0.76125,
            0.764375,
            0.7675,
            0.77875,
            0.865,
            0.885,
            0.9,
            0.94,
            1.02,
        ),
        MICROMETRES,
        tuple(f"{n:02d}" for n in range(1, 22)),
    ),
    "SPOT 4 [bands 1, 2, 3, 4]": Sensor(
        (0.545, 0.645, 0.835, 1.665), MICROMETRES, ("01", "02", "03", "04")
    ),
    "SPOT 5 [bands 1, 2, 3, 4]": Sensor(
        (0.545, 0.645, 0.835, 1.665), MICROMETRES, ("01", "02", "03", "04")
    ),
    "SPOT 6 [bands 1, 2, 3, 4]": Sensor(
        (0.485, 0.56, 0.66, 0.825), MICROMETRES, ("01", "02", "03", "04")
    ),
    "WorldView-2 -3 Multispectral [bands 1, 2, 3, 4, 5, 6, 7, 8]": Sensor(
        (0.425, 0.48, 0.545, 0.605, 0.66, 0.725, 0.8325, 0.95),
        MICROMETRES,
        ("01", "02", "03", "04", "05", "06", "07", "08"),
    ),
}


def sensor_name(given: str) -> str:
    """The full name of the sensor `given` names: itself (any case), else the first whose
    name contains it (any case, spaces ignored too), as Remotior matches it;
    `NO_SATELLITE` for band order. Raises InvalidArgumentError for none."""
    wanted = given.strip().lower()
    if not wanted:
        raise InvalidArgumentError("sensor is empty")
    names = (NO_SATELLITE, *SENSORS)
    for name in names:
        if name.lower() == wanted:
            return name
    for name in names:
        if wanted in name.lower() or wanted.replace(" ", "") in name.lower().replace(" ", ""):
            return name
    shown = given if len(given) <= 100 else given[:100] + "..."
    raise InvalidArgumentError(
        f"sensor {shown!r} is not known; use one of {sorted(names)} (or a part of a name)"
    )


@dataclass(frozen=True)
class BandSpec:
    """A band as a client describes it, before its file is checked."""

    path: str
    raster_band: int = 0
    name: str = ""
    wavelength: float | None = None
    wavelength_unit: str = ""
    multiplicative_factor: float | None = None
    additive_factor: float | None = None
    date: str = ""


@dataclass(frozen=True)
class Band:
    """A band of a band set, its file checked and described."""

    path: str
    raster_band: int
    name: str
    wavelength: float
    wavelength_unit: str
    multiplicative_factor: float
    additive_factor: float
    date: str
    data_path: str
    width: int
    height: int
    crs: str
    data_type: str
    nodata: float | None
    transform: tuple[float, ...]  # rasterio's affine order: a, b, c, d, e, f


@dataclass(frozen=True)
class BandSet:
    """An ordered list of bands on one grid, with a name, a date and a root folder."""

    display_name: str = "BandSet"
    date: str = ""
    root_directory: str = ""
    bands: tuple[Band, ...] = ()
    sensor: str = ""
    # Remotior's `box_coordinate_list`: (left, top, right, bottom), the area band tools
    # read the bands in; None for all of it.
    box: tuple[float, float, float, float] | None = None


def check_box(left: float, top: float, right: float, bottom: float, field: str):
    """A box (left, top, right, bottom) of finite edges, left of right and above bottom;
    InvalidArgumentError otherwise."""
    edges = (left, top, right, bottom)
    if not all(math.isfinite(edge) for edge in edges) or left >= right or bottom >= top:
        raise InvalidArgumentError(
            f"{field} {list(edges)} is not [left, top, right, bottom] with left < right "
            "and bottom < top",
            metadata={"field": field},
        )
    return edges


def check_date(date: str, field: str) -> str:
    """`date` when empty or a valid YYYY-MM-DD date; InvalidArgumentError otherwise."""
    if date:
        try:
            if not _DATE.match(date):
                raise ValueError
            datetime.date.fromisoformat(date)
        except ValueError:
            raise InvalidArgumentError(
                f"{field} {date[:40]!r} is not a date written YYYY-MM-DD", metadata={"field": field}
            ) from None
    return date


def check_text(text: str, field: str) -> str:
    if len(text) > _MAX_TEXT:
        raise InvalidArgumentError(
            f"{field} is {len(text)} characters long; at most {_MAX_TEXT}",
            metadata={"field": field},
        )
    return text


def default_display_name(bands: Sequence[Band]) -> str:
    """Remotior's name of a band set given none: its first band's name without its last
    two characters (`S2_B02` gives `S2_B`), or `BandSet`."""
    return (bands[0].name[:-2] if bands else "") or "BandSet"


def _data_path(root_directory: str, path: str) -> str:
    if root_directory and not path.startswith("/"):
        return posixpath.join(root_directory, path)
    return path


def _stem(path: str) -> str:
    name = posixpath.basename(path)
    return name.rsplit(".", 1)[0] if "." in name else name


def check_band_count(count: int) -> None:
    """RESOURCE_EXHAUSTED for more bands than a band set holds."""
    if count > MAX_BANDS:
        raise ResourceExhaustedError(
            f"a band set holds at most {MAX_BANDS} bands; {count} were given",
            metadata={"limit": str(MAX_BANDS)},
        )


def list_folder(
    data_root: DataRoot, folder: str, name_filter: str, root_directory: str
) -> list[str]:
    """The GeoTIFFs (`.tif`, `.tiff`, any case) directly in `folder` whose names contain
    `name_filter`, sorted by name, as paths written like `folder` (relative to
    `root_directory` when `folder` is). The folder is opened as every path is: without
    following a link, in it or on the way."""
    source = data_root.path(_data_path(root_directory, folder), field="folder")

    def wanted(name: str) -> bool:
        return name.lower().endswith(_TIFF_SUFFIXES) and name_filter in name

    names = []
    for name in _folder_files(source, wanted):
        names.append(name)
        check_band_count(len(names))
    return [tidy_path(posixpath.join(folder, name)) for name in sorted(names)]


def _folder_files(source: DataPath, wanted: Callable[[str], bool]) -> Iterator[str]:
    """The names `wanted` of the regular files (or objects) directly in the folder
    `source`."""
    store = source.store
    if store is not None:
        with source.storage_errors():
            yield from filter(wanted, store.list_folder(source.parts))
        return
    parent = source.open_parent(create=False)
    try:
        try:
            fd = os.open(source.name, _DIRECTORY_FLAGS, dir_fd=parent)
        except OSError as error:
            raise source.refusal(error, parent, source.name, source.path) from None
    finally:
        os.close(parent)
    try:
        for name in filter(wanted, os.listdir(fd)):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            if stat.S_ISREG(st.st_mode):
                yield name
    finally:
        os.close(fd)


def _describe_all(source: DataPath, raster_band: int) -> list[RasterInfo]:
    """Band `raster_band` of `source`; with 0, every band of a multiband file."""
    if raster_band:
        return [describe(source, raster_band)]
    infos = [describe(source, 1)]
    while True:
        try:
            infos.append(describe(source, len(infos) + 1))
        except InvalidArgumentError:  # band 1 was read: no such band
            return infos
        check_band_count(len(infos))


def build_bands(
    data_root: DataRoot,
    specs: Sequence[BandSpec],
    root_directory: str,
    *,
    bands_field: str = "bands",
) -> tuple[Band, ...]:
    """The bands `specs` describe, each file checked as any input is and described; all on
    one grid. As in Remotior, one file given alone with no band number gives all its
    bands, named `{file name}#b{i}` (i from 0) when it has several. Errors name the bands
    `bands_field[i]`."""
    check_band_count(len(specs))
    if root_directory:
        check_text(root_directory, "root_directory")
    bands: list[Band] = []
    infos: list[RasterInfo] = []
    labels: list[str] = []
    for i, spec in enumerate(specs):
        field = f"{bands_field}[{i}]"
        check_text(spec.name, f"{field}.name")
        check_date(spec.date, f"{field}.date")
        check_text(spec.wavelength_unit, f"{field}.wavelength_unit")
        if spec.raster_band < 0:
            raise InvalidArgumentError(
                f"{field}.raster_band is {spec.raster_band}; band numbers start at 1"
            )
        source = data_root.path(_data_path(root_directory, spec.path), field=f"{field}.path")
        whole_file = len(specs) == 1 and spec.raster_band == 0
        described = _describe_all(source, 0 if whole_file else spec.raster_band or 1)
        for info in described:
            position = len(bands) + 1
            name = spec.name or _stem(spec.path)
            if len(described) > 1:
                name = f"{name}#b{info.band - 1}"
            bands.append(
                Band(
                    path=spec.path,
                    raster_band=info.band,
                    name=name,
                    wavelength=float(position if spec.wavelength is None else spec.wavelength),
                    wavelength_unit=(
                        NO_UNIT if spec.wavelength is None else spec.wavelength_unit or NO_UNIT
                    ),
                    multiplicative_factor=(
                        1.0 if spec.multiplicative_factor is None else spec.multiplicative_factor
                    ),
                    additive_factor=0.0 if spec.additive_factor is None else spec.additive_factor,
                    date=spec.date,
                    data_path=source.path,
                    width=info.width,
                    height=info.height,
                    crs=info.crs,
                    data_type=info.dtype,
                    nodata=info.nodata,
                    transform=tuple(info.transform[:6]),
                )
            )
            infos.append(info)
            labels.append(f"{field} {spec.path!r} band {info.band}")
    if infos:
        check_same_grid(infos, labels)
    return tuple(bands)


def _sensor_wavelength(name: str, position: int, sensor: Sensor) -> float:
    """The wavelength of the sensor band `name` ends with (`B02` or `B2`, `B8A`), as
    Remotior finds it; else the sensor's at `position` (0-based); else the position."""
    names = [n.lower() for n in sensor.band_names]
    tail = name.lower()[-2:]
    if tail in names:
        return sensor.wavelengths[names.index(tail)]
    stripped = tail.lstrip("0")
    if stripped.isdigit():  # a two-digit number that is not one of the sensor's
        if stripped in names:
            return sensor.wavelengths[names.index(stripped)]
    else:
        last = name.lower()[-1:].lstrip("0")
        if last and last in names:
            return sensor.wavelengths[names.index(last)]
    if position < len(sensor.wavelengths):
        return sensor.wavelengths[position]
    return float(position + 1)


def apply_sensor(bands: Sequence[Band], sensor: str) -> tuple[Band, ...]:
    """`bands` with the wavelengths and unit of `sensor` (a full name), sorted by
    wavelength (in their order where equal): Remotior's `set_satellite_wavelength`."""
    if sensor == NO_SATELLITE:
        return tuple(
            replace(band, wavelength=float(i + 1), wavelength_unit=NO_UNIT)
            for i, band in enumerate(bands)
        )
    preset = SENSORS[sensor]
    set_bands = [
        replace(
            band,
            wavelength=float(_sensor_wavelength(band.name, i, preset)),
            wavelength_unit=preset.unit,
        )
        for i, band in enumerate(bands)
    ]
    return tuple(sorted(set_bands, key=lambda band: band.wavelength))


def sort_by_wavelength(bands: Sequence[Band]) -> tuple[Band, ...]:
    return tuple(sorted(bands, key=lambda band: band.wavelength))


class BandSetCatalog:
    """A session's band sets, numbered from 1, and which one is current. Thread-safe: each
    method is one step under the catalog's lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bandsets: list[BandSet] = [BandSet()]
        self._current = 1

    def _at(self, number: int) -> BandSet:
        if not 1 <= number <= len(self._bandsets):
            raise NotFoundError(
                f"band set {number} does not exist; the catalog holds "
                f"{len(self._bandsets)} band set(s)",
                metadata={"bandset": str(number)},
            )
        return self._bandsets[number - 1]

    def get(self, number: int) -> tuple[BandSet, bool]:
        """Band set `number`, and whether it is current."""
        with self._lock:
            return self._at(number), number == self._current

    def list(self) -> tuple[list[BandSet], int]:
        """Every band set, by number, and the current number."""
        with self._lock:
            return list(self._bandsets), self._current

    def add(self, bandset: BandSet, number: int, *, insert: bool, current: bool) -> int:
        """Put `bandset` at `number` (0: after the last), replacing the band set there or,
        with `insert`, moving it and those after it up; returns its number."""
        with self._lock:
            count = len(self._bandsets)
            if number <= 0 or number > count:
                number = count + 1
            if number > count or insert:
                if count >= MAX_BANDSETS:
                    raise ResourceExhaustedError(
                        f"a session's catalog holds at most {MAX_BANDSETS} band sets",
                        metadata={"limit": str(MAX_BANDSETS)},
                    )
                self._bandsets.insert(number - 1, bandset)
            else:
                self._bandsets[number - 1] = bandset
            if current:
                self._current = number
            return number

    def replace(self, number: int, previous: BandSet, bandset: BandSet, *, current: bool) -> None:
        """Swap `previous`, read at `number`, for `bandset`; FailedPreconditionError if the
        band set there changed meanwhile."""
        with self._lock:
            if self._at(number) is not previous:
                raise FailedPreconditionError(
                    f"band set {number} changed while it was updated; read it and try again"
                )
            self._bandsets[number - 1] = bandset
            if current:
                self._current = number

    def delete(self, number: int) -> None:
        """Remove band set `number`; those after it move down. The last one removed leaves
        an empty band set, as in Remotior."""
        with self._lock:
            self._at(number)
            del self._bandsets[number - 1]
            if not self._bandsets:
                self._bandsets.append(BandSet())
            self._current = min(self._current, len(self._bandsets))
