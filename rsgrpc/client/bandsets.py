"""BandSets and the BandSet catalog, with Remotior Sensus' methods, kept on the server.

The catalog is the session's (``rs.bandset_catalog``, also callable as Remotior's
``rs.bandset_catalog()``): each method is a call to the server's BandSetService, and a
`BandSet` is what the server last answered for it. A BandSet got from the catalog is
refreshed by the catalog's methods that change it, as Remotior's object is changed in
place; after a band set is inserted or removed, numbers move and earlier objects keep
what they held.

As on the server, every file is checked when a band set is made or its bands change: a
GeoTIFF under a data root, on one grid with the other bands; a refusal raises the
server's `grpc.RpcError`. A path ending in ``.tif`` or ``.tiff`` names a file, any other a
folder: the script's machine cannot tell which the server's path is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2

from rsgrpc.v1 import bandset_pb2, bandset_pb2_grpc

if TYPE_CHECKING:
    from rsgrpc.client.session import Session

NO_SATELLITE = "Band order"
NO_UNIT = "band number"
WL_MICRO = "µm (1 E-6m)"
WL_NANO = "nm (1 E-9m)"
DATE_AUTO = "auto"
_TIFF_SUFFIXES = (".tif", ".tiff")
_FOLDER_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


@dataclass
class Band:
    """One band, with the fields of a row of Remotior's band table that the server
    knows; ``band["name"]`` reads a field as a NumPy record does."""

    band_number: int
    raster_band: int
    path: str
    data_path: str
    root_directory: str
    name: str
    wavelength: float
    wavelength_unit: str
    multiplicative_factor: float
    additive_factor: float
    date: str
    x_count: int
    y_count: int
    crs: str
    data_type: str
    nodata: float | None

    def __getitem__(self, field: str) -> Any:
        return getattr(self, field)


class BandTable(list):
    """A band set's bands in order; ``bands["wavelength"]`` lists one field of every band,
    as a column of Remotior's table."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return [getattr(band, key) for band in self]
        return super().__getitem__(key)


class BandSet:
    """A band set of the session's catalog (Remotior's `BandSet`): iterate over its
    bands, each with ``.path``, ``.name``, ``.wavelength``, ..."""

    def __init__(self, message: bandset_pb2.BandSet, catalog: BandSetCatalog | None) -> None:
        self.catalog = catalog
        self._take(message)

    def _take(self, message: bandset_pb2.BandSet) -> None:
        self.message = message
        self.number = message.bandset_number
        self.uid = message.name
        to_client = self.catalog._to_client if self.catalog else (lambda path: path)
        self.bands = BandTable(
            Band(
                band_number=b.band_number,
                raster_band=b.raster_band,
                path=to_client(b.path),
                data_path=b.data_path,
                root_directory=to_client(message.root_directory)
                if message.root_directory
                else None,
                name=b.name,
                wavelength=b.wavelength,
                wavelength_unit=b.wavelength_unit,
                multiplicative_factor=b.multiplicative_factor,
                additive_factor=b.additive_factor,
                date=b.date or None,
                x_count=b.width,
                y_count=b.height,
                crs=b.crs,
                data_type=b.data_type,
                nodata=b.nodata if b.HasField("nodata") else None,
            )
            for b in message.bands
        )

    # Remotior's attributes: changing one changes the band set on the server.
    @property
    def name(self) -> str:
        return self.message.display_name

    @name.setter
    def name(self, name: str) -> None:
        self._set("display_name", name)

    @property
    def date(self) -> str | None:
        return self.message.date or None

    @date.setter
    def date(self, date: str) -> None:
        self._set("date", date or "")

    @property
    def root_directory(self) -> str | None:
        root = self.message.root_directory
        return self.catalog._to_client(root) if root and self.catalog else root or None

    @root_directory.setter
    def root_directory(self, root_directory: str) -> None:
        server = self.catalog._to_server(root_directory) if self.catalog else root_directory
        self._set("root_directory", server or "")

    @property
    def crs(self) -> str | None:
        return self.bands[0].crs if self.bands else None

    @property
    def sensor(self) -> str:
        return self.message.sensor

    def _set(self, field: str, value: Any) -> None:
        if self.catalog is None:
            raise ValueError("this BandSet is not in a catalog")
        self.catalog._update(self.number, field_mask=[field], **{field: value})

    def __iter__(self) -> Iterator[Band]:
        return iter(self.bands)

    def __len__(self) -> int:
        return len(self.bands)

    def __repr__(self) -> str:
        return f"BandSet({self.uid!r}, name={self.name!r}, bands={len(self.bands)})"

    def get_band_count(self) -> int:
        return len(self.bands)

    def get_paths(self) -> list[str]:
        """The bands' paths, as given (relative to the root directory when one is set)."""
        return [band.path for band in self.bands]

    def get_absolute_paths(self) -> list[str]:
        """The bands' paths joined to the root directory: the paths tools read."""
        to_client = self.catalog._to_client if self.catalog else (lambda path: path)
        return [to_client(band.data_path) for band in self.bands]

    def get_path(self, band_number: int) -> list[str]:
        return [band.path for band in self.bands if band.band_number == band_number]

    def get_absolute_path(self, band_number: int) -> str | None:
        paths = [band.data_path for band in self.bands if band.band_number == band_number]
        if not paths:
            return None
        return self.catalog._to_client(paths[0]) if self.catalog else paths[0]

    def get_wavelengths(self) -> list[float]:
        return [band.wavelength for band in self.bands]

    def get_wavelength_units(self) -> list[str]:
        return [band.wavelength_unit for band in self.bands]

    def get_raster_band_list(self) -> list[list[int]]:
        return [[band.raster_band] for band in self.bands]

    def get_band_attributes(self, attribute: str | None = None) -> Any:
        """Every band's `attribute`; the bands when None; None if there are no bands."""
        if attribute is None:
            return self.bands
        if not self.bands:
            return None
        return self.bands[attribute]

    def get_bands_by_attributes(
        self, attribute: str, attribute_value: Any, output_as_number: bool = False
    ) -> Any:
        """The bands whose `attribute` equals `attribute_value` (their numbers with
        `output_as_number`)."""
        found = BandTable(b for b in self.bands if getattr(b, attribute) == attribute_value)
        return [b.band_number for b in found] if output_as_number else found

    def get_band_alias(self) -> list[str]:
        """Remotior's band aliases, ``b1``, ``b2``, ...; with the band set's number they are
        ``bandset1b1``... (`BandSetCatalog.create_band_string_list`)."""
        return [f"b{i}" for i in range(1, len(self.bands) + 1)]

    def get_band(self, number: int | None = None) -> Any:
        """Band `number` (a table of one band, as Remotior's); every band when None."""
        if number is None:
            return self.bands
        if not number:
            return None
        return BandTable(b for b in self.bands if b.band_number == number)

    def get_band_by_wavelength(
        self, wavelength: float, threshold: float | None = None, output_as_number: bool = False
    ) -> Any:
        """The bands whose wavelength is within `threshold` of `wavelength` (equal when
        None), nearest first as in Remotior."""
        found = [
            b for b in self.bands if abs(b.wavelength - wavelength) <= (threshold or 0) + 1e-12
        ]
        found.sort(key=lambda b: abs(b.wavelength - wavelength))
        return [b.band_number for b in found] if output_as_number else BandTable(found)

    get = get_band


class BandSetCatalog:
    """The session's catalog of band sets on the server (Remotior's `BandSetCatalog`).

    Numbers start at 1; the catalog always holds at least one band set (a new session's
    is empty), and methods given no `bandset_number` use the current one.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._stub = bandset_pb2_grpc.BandSetServiceStub(session._channel)
        self._objects: dict[int, BandSet] = {}
        self.get = self.get_bandset

    def __call__(self) -> BandSetCatalog:
        """Remotior's ``rs.bandset_catalog()``: here the session's own catalog."""
        return self

    # Calls to the server.
    def _name(self, number: int) -> str:
        return f"{self._session.name}/bandsets/{number}"

    def _to_server(self, path: str) -> str:
        return self._session.path_map.to_server(path) if path else path

    def _to_client(self, path: str) -> str:
        return self._session.path_map.to_client(path) if path else path

    def _object(self, message: bandset_pb2.BandSet) -> BandSet:
        """The BandSet object of the message's number, refreshed with it."""
        known = self._objects.get(message.bandset_number)
        if known is None:
            known = self._objects[message.bandset_number] = BandSet(message, self)
        else:
            known._take(message)
        return known

    def _renumbered(self) -> None:
        self._objects.clear()  # numbers moved: earlier objects keep what they held

    def _list(self) -> list[bandset_pb2.BandSet]:
        found, token = [], ""
        while True:
            page = self._stub.ListBandSets(
                bandset_pb2.ListBandSetsRequest(parent=self._session.name, page_token=token),
                metadata=self._session._metadata,
            )
            found.extend(page.bandsets)
            token = page.next_page_token
            if not token:
                return found

    def _message(self, bandset_number: int | None) -> bandset_pb2.BandSet:
        number = self.current_bandset if bandset_number is None else bandset_number
        return self._stub.GetBandSet(
            bandset_pb2.GetBandSetRequest(name=self._name(number)),
            metadata=self._session._metadata,
        )

    def _update(self, number: int | None, *, field_mask: Sequence[str], **fields: Any) -> BandSet:
        if number is None:
            number = self.current_bandset
        message = self._stub.UpdateBandSet(
            bandset_pb2.UpdateBandSetRequest(
                bandset=bandset_pb2.BandSet(name=self._name(number), **fields),
                update_mask=field_mask_pb2.FieldMask(paths=list(field_mask)),
            ),
            metadata=self._session._metadata,
        )
        return self._object(message)

    def _set_bands(self, number: int | None, bands: Sequence[bandset_pb2.Band]) -> BandSet:
        return self._update(number, field_mask=["bands"], bands=list(bands))

    # Remotior's methods.
    def get_bandset_count(self) -> int:
        return len(self._list())

    @property
    def current_bandset(self) -> int:
        """The number of the current band set; setting it makes that one current (a number
        past the last means the last, 0 the first, as in Remotior)."""
        for message in self._list():
            if message.current:
                return message.bandset_number
        return 1

    @current_bandset.setter
    def current_bandset(self, bandset_number: int) -> None:
        number = min(bandset_number, self.get_bandset_count()) or 1
        self._update(number, field_mask=["current"], current=True)

    def get_bandset(self, bandset_number: int | None = None, attribute: str | None = None) -> Any:
        """Band set `bandset_number` (the current when None), or its bands' `attribute`;
        None when there is no such band set."""
        try:
            bandset = self._object(self._message(bandset_number))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return bandset if attribute is None else bandset.get_band_attributes(attribute)

    def get_bandset_by_number(self, number: int) -> BandSet | None:
        return self.get_bandset(number)

    def get_bandset_by_name(self, bandset_name: str, output_number: bool = False) -> Any:
        """The first band set called `bandset_name` (its number with `output_number`)."""
        for message in self._list():
            if message.display_name == bandset_name:
                return message.bandset_number if output_number else self._object(message)
        return None

    def get_bandset_bands_by_attribute(
        self,
        bandset_number: int,
        attribute: str,
        attribute_value: Any,
        output_number: bool = False,
    ) -> Any:
        bandset = self.get_bandset(bandset_number)
        if bandset is None:
            return None
        return bandset.get_bands_by_attributes(attribute, attribute_value, output_number)

    def get_band_count(self, bandset_number: int | None = None) -> int | None:
        bandset = self.get_bandset(bandset_number)
        return None if bandset is None else bandset.get_band_count()

    def get_name(self, bandset_number: int | None = None) -> str | None:
        bandset = self.get_bandset(bandset_number)
        return None if bandset is None else bandset.name

    def get_date(self, bandset_number: int | None = None) -> str | None:
        bandset = self.get_bandset(bandset_number)
        return None if bandset is None else bandset.date

    def get_root_directory(self, bandset_number: int | None = None) -> str | None:
        bandset = self.get_bandset(bandset_number)
        return None if bandset is None else bandset.root_directory

    def get_crs(self, bandset_number: int | None = None) -> str | None:
        bandset = self.get_bandset(bandset_number)
        return None if bandset is None else bandset.crs

    def create_band_string_list(self, bandset_number: int | None = None) -> list[str]:
        """The bands' names in band calc expressions: ``["bandset1b1", ...]``, quoted."""
        bandset = self.get_bandset(bandset_number)
        number = bandset.number
        return [f'"bandset{number}b{band.band_number}"' for band in bandset.bands]

    def create_bandset(
        self,
        paths: list | str | None = None,
        band_names: list | None = None,
        wavelengths: list | str | None = None,
        unit: str | None = None,
        multiplicative_factors: list | None = None,
        additive_factors: list | None = None,
        date: list | str | None = None,
        bandset_number: int | None = None,
        insert: bool | None = False,
        root_directory: str | None = None,
        bandset_name: str | None = None,
        box_coordinate_list: list | None = None,
    ) -> BandSet:
        """Create a band set in the catalog (Remotior's `create_bandset`): from a list of
        files, a file (all its bands), a folder, or ``[folder, name filter]``;
        `wavelengths` lists each band's center wavelength or names a sensor
        (``"Sentinel-2"``, ``["Landsat 8"]``). With no `bandset_number` it replaces the
        current band set (or, with `insert`, goes before it)."""
        if box_coordinate_list is not None:
            raise ValueError("box_coordinate_list is not supported by the server yet")
        folder, name_filter, files = _sources(paths)
        sensor, wavelength_list = _wavelengths(wavelengths)
        dates = list(date) if isinstance(date, list | tuple) else None
        single_date = date if isinstance(date, str) else ""
        if single_date.lower() == DATE_AUTO:
            single_date = _folder_date(folder or "")
        bands = []
        for i, path in enumerate(files):
            band = bandset_pb2.Band(
                path=self._to_server(str(path)),
                name=_item(band_names, i) or "",
                wavelength_unit=unit or "",
                date=(_item(dates, i) if dates else single_date) or "",
            )
            if _item(wavelength_list, i) is not None:
                band.wavelength = float(wavelength_list[i])
                band.wavelength_unit = unit or NO_UNIT
            if _item(multiplicative_factors, i) is not None:
                band.multiplicative_factor = float(multiplicative_factors[i])
            if _item(additive_factors, i) is not None:
                band.additive_factor = float(additive_factors[i])
            bands.append(band)
        number = self.current_bandset if bandset_number is None else bandset_number
        message = self._stub.CreateBandSet(
            bandset_pb2.CreateBandSetRequest(
                parent=self._session.name,
                bandset=bandset_pb2.BandSet(
                    display_name=bandset_name or "",
                    date=(dates[-1] if dates else single_date) or "",
                    root_directory=self._to_server(root_directory or ""),
                    bands=bands,
                    sensor=sensor or "",
                ),
                bandset_number=max(number, 1),
                insert=bool(insert),
                folder=self._to_server(folder) if folder else "",
                name_filter=name_filter or "",
            ),
            metadata=self._session._metadata,
        )
        if insert:
            self._renumbered()
        return self._object(message)

    def remove_bandset(self, bandset_number: int) -> None:
        self._stub.DeleteBandSet(
            bandset_pb2.DeleteBandSetRequest(name=self._name(bandset_number)),
            metadata=self._session._metadata,
        )
        self._renumbered()

    def add_band_to_bandset(
        self,
        path: str,
        bandset_number: int | None = None,
        band_number: int | None = None,
        raster_band: int | None = None,
        band_name: str | None = None,
        date: str | None = None,
        unit: str | None = None,
        root_directory: str | None = None,
        multiplicative_factor: float | None = None,
        additive_factor: float | None = None,
        wavelength: float | None = None,
    ) -> None:
        """Add a band at `band_number` (after the last when None); its wavelength is its
        band number when None, as in Remotior. The band set's root directory applies
        (`root_directory` is not per band on the server)."""
        message = self._message(bandset_number)
        bands = list(message.bands)
        position = len(bands) + 1 if band_number is None else max(1, band_number)
        band = bandset_pb2.Band(
            path=self._to_server(path),
            raster_band=raster_band or 1,
            name=band_name or "",
            date=date or "",
            wavelength=float(position if wavelength is None else wavelength),
            wavelength_unit=(unit or NO_UNIT) if wavelength is not None else NO_UNIT,
        )
        if multiplicative_factor is not None:
            band.multiplicative_factor = float(multiplicative_factor)
        if additive_factor is not None:
            band.additive_factor = float(additive_factor)
        bands.insert(position - 1, band)
        self._set_bands(message.bandset_number, bands)

    def remove_band_in_bandset(self, band_number: int, bandset_number: int | None = None) -> None:
        message = self._message(bandset_number)
        bands = [b for b in message.bands if b.band_number != band_number]
        self._set_bands(message.bandset_number, bands)

    def move_band_in_bandset(
        self,
        band_number_input: int,
        band_number_output: int,
        bandset_number: int | None = None,
        wavelength: bool = True,
    ) -> None:
        """Move a band to another position; with `wavelength`, the wavelengths stay in
        their positions, as in Remotior."""
        message = self._message(bandset_number)
        bands = list(message.bands)
        old = [(b.wavelength, b.wavelength_unit) for b in bands]
        moved = bands.pop(band_number_input - 1)
        bands.insert(band_number_output - 1, moved)
        if wavelength:
            bands = [_with_wavelength(b, *old[i]) for i, b in enumerate(bands)]
        self._set_bands(message.bandset_number, bands)

    def sort_bands_by_wavelength(self, bandset_number: int | None = None) -> None:
        message = self._message(bandset_number)
        bands = sorted(message.bands, key=lambda b: b.wavelength)
        self._set_bands(message.bandset_number, bands)

    def sort_bands_by_name(
        self, bandset_number: int | None = None, keep_wavelength_order: bool | None = True
    ) -> None:
        message = self._message(bandset_number)
        old = [(b.wavelength, b.wavelength_unit) for b in message.bands]
        bands = sorted(message.bands, key=lambda b: b.name)
        if keep_wavelength_order:
            bands = [_with_wavelength(b, *old[i]) for i, b in enumerate(bands)]
        self._set_bands(message.bandset_number, bands)

    def set_satellite_wavelength(self, satellite_name: str, bandset_number: int | None = None):
        """Set the bands' wavelengths from a sensor (``"Sentinel-2"``, ``"Landsat 8"``,
        ``"Band order"``), then sort them by wavelength."""
        self._update(bandset_number, field_mask=["sensor"], sensor=satellite_name)

    def set_wavelength(
        self, wavelength_list: Sequence[float], unit: str, bandset_number: int | None = None
    ) -> None:
        message = self._message(bandset_number)
        bands = [
            _with_wavelength(b, float(wavelength_list[i]), unit) if i < len(wavelength_list) else b
            for i, b in enumerate(message.bands)
        ]
        bands.sort(key=lambda b: b.wavelength)
        self._set_bands(message.bandset_number, bands)

    def set_date(self, date: str, bandset_number: int | None = None) -> None:
        self._update(bandset_number, field_mask=["date"], date=date or "")

    def set_name(self, name: str, bandset_number: int | None = None) -> None:
        self._update(bandset_number, field_mask=["display_name"], display_name=name or "")

    def set_root_directory(self, root_directory: str, bandset_number: int | None = None) -> None:
        self._update(
            bandset_number,
            field_mask=["root_directory"],
            root_directory=self._to_server(root_directory or ""),
        )

    def get_band_list(self, bandset: Any = None, bandset_catalog: Any = None) -> list[str]:
        """The paths tools read for a BandSet, a band set number, or a list of paths."""
        if isinstance(bandset, BandSet):
            return bandset.get_absolute_paths()
        if isinstance(bandset, int) and not isinstance(bandset, bool):
            found = self.get_bandset(bandset)
            return [] if found is None else found.get_absolute_paths()
        return list(bandset or [])


def _item(values: Sequence | None, i: int) -> Any:
    return values[i] if values is not None and i < len(values) else None


def _with_wavelength(band: bandset_pb2.Band, wavelength: float, unit: str) -> bandset_pb2.Band:
    copy = bandset_pb2.Band()
    copy.CopyFrom(band)
    copy.wavelength = wavelength
    copy.wavelength_unit = unit
    return copy


def _is_file(path: Any) -> bool:
    return str(path).lower().endswith(_TIFF_SUFFIXES)


def _sources(paths: Any) -> tuple[str | None, str | None, list[str]]:
    """(folder, name filter, files) from Remotior's `paths`."""
    if paths is None:
        return None, None, []
    if isinstance(paths, str):
        return (None, None, [paths]) if _is_file(paths) else (paths, None, [])
    paths = list(paths)
    if 1 <= len(paths) <= 2 and not _is_file(paths[0]) and not any(map(_is_file, paths[1:])):
        name_filter = str(paths[1]).strip("'").strip() if len(paths) == 2 else None
        return str(paths[0]), name_filter, []
    return None, None, [str(path) for path in paths]


def _wavelengths(wavelengths: Any) -> tuple[str | None, list | None]:
    """(sensor, wavelength list) from Remotior's `wavelengths`."""
    if wavelengths is None:
        return None, None
    if isinstance(wavelengths, str):
        return wavelengths, None
    values = list(wavelengths)
    if len(values) == 1 and isinstance(values[0], str):
        return values[0], None
    return None, values


def _folder_date(folder: str) -> str:
    """Remotior's ``date="auto"``: the date in a folder's name (``S2_2020-01-01``)."""
    found = _FOLDER_DATE.search(folder.rstrip("/").rsplit("/", 1)[-1])
    return "-".join(found.groups()) if found else ""
