"""BandSets and the BandSet catalog, with Remotior Sensus' methods; the server builds them.

The catalog is the session's (``rs.bandset_catalog``, also callable as Remotior's
``rs.bandset_catalog()``): each method is a call to the server's BandSetService, and a
`BandSet` is what the server last answered for it. A BandSet got from the catalog is
refreshed by the catalog's methods that change it, as Remotior's object is changed in
place; after a band set is inserted or removed, numbers move and earlier objects keep
what they held.

A band set outside the catalog (``rs.bandset.create(...)``, Remotior's `BandSet.create`)
is built by the server by the same rules, and kept by the client: `CreateBandSet` with
``validate_only`` checks its files, applies a sensor's wavelengths and sorts its bands,
then returns it without adding it to the catalog. It is the same class, read the same way;
a change to it is checked by the server again. The band tools read its bands' files; band
calc sends it in its request (``inline_bandset``), where the server checks it again and
reads ``"b1"`` and the aliases from it, never adding it to the catalog;
``catalog.add_bandset(bs)`` copies it in.

As on the server, every file is checked when a band set is made or its bands change: a
GeoTIFF under a data root, on one grid with the other bands; a refusal raises the
server's `grpc.RpcError`. A path ending in ``.tif`` or ``.tiff`` names a file, any other a
folder: the script's machine cannot tell which the server's path is.
"""

from __future__ import annotations

import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf import message as message_module

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


def _placement(band: bandset_pb2.Band) -> dict[str, float]:
    """Remotior's fields of where a band lies: pixel size and bounds, from its geotransform
    (a north-up raster's; NaN for a band the server did not place)."""
    if len(band.geo_transform) != 6:
        return dict.fromkeys(("x_size", "y_size", "top", "left", "bottom", "right"), math.nan)
    left, x_size, _, top, _, y_step = band.geo_transform
    return {
        "x_size": x_size,
        "y_size": abs(y_step),
        "top": top,
        "left": left,
        "bottom": top + y_step * band.height,
        "right": left + x_size * band.width,
    }


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
    x_size: float
    y_size: float
    top: float
    left: float
    bottom: float
    right: float
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
    """A band set (Remotior's `BandSet`), of the session's catalog or outside it
    (``rs.bandset.create(...)``): iterate over its bands, each with ``.path``, ``.name``,
    ``.wavelength``, ...

    ``rs.bandset`` is this class bound to the session (`bandset_class`), as Remotior's
    ``rs.bandset`` is its class: the catalog's band sets are instances of it too.
    """

    # The session whose server builds the band sets `create` makes; set by `bandset_class`.
    session: Session | None = None

    def __init__(
        self,
        message: bandset_pb2.BandSet,
        catalog: BandSetCatalog | None = None,
        *,
        session: Session | None = None,
    ) -> None:
        self.catalog = catalog
        self._session = session or (catalog._session if catalog else type(self).session)
        # Remotior's unique ID: a catalog's band set is named by its number on the server.
        self.uid = message.name or f"bandset_{uuid.uuid4().hex}"
        self._take(message)

    @classmethod
    def create(
        cls,
        paths: list | str | None = None,
        band_names: list | str | None = None,
        wavelengths: list | str | None = None,
        unit: str | None = None,
        multiplicative_factors: list | None = None,
        additive_factors: list | None = None,
        dates: list | str | None = None,
        root_directory: str | None = None,
        box_coordinate_list: list | None = None,
        name: str | None = None,
        catalog: Any = None,
    ) -> BandSet:
        """A band set outside the catalog (Remotior's `BandSet.create`, called as
        ``rs.bandset.create(...)``), from a list of files, a file (all its bands), a folder,
        or ``[folder, name filter]``; `wavelengths` lists each band's center wavelength or
        names a sensor (``"Sentinel-2"``, ``["Landsat 8"]``), and the bands are sorted by
        wavelength; `dates` is one date, a date per band, or ``"auto"`` (the date in the
        folder's name). The server checks every file as it does for the catalog; nothing
        is added to it. `catalog` is accepted, as in Remotior, and not used: add the band
        set with ``catalog.add_bandset(bandset)``."""
        session = cls.session
        if session is None:
            raise TypeError(
                "BandSet.create asks a session's server to build the band set: call "
                "rs.bandset.create(...)"
            )
        given, folder, name_filter = describe_bandset(
            session.path_map.to_server,
            paths,
            band_names,
            wavelengths,
            unit,
            multiplicative_factors,
            additive_factors,
            dates,
            root_directory,
            name,
            list_folder=session.bandset_catalog._list_folder,
        )
        _set_box(given, box_coordinate_list)
        built = session.bandset_catalog._create(
            given, folder=folder, name_filter=name_filter, validate_only=True
        )
        return cls(built, session=session)

    def _to_client(self, path: str) -> str:
        return self._session.path_map.to_client(path) if path and self._session else path

    def _to_server(self, path: str) -> str:
        return self._session.path_map.to_server(path) if path and self._session else path

    def _take(self, message: bandset_pb2.BandSet) -> None:
        self.message = message
        self.number = message.bandset_number
        if message.name:
            self.uid = message.name
        root = self._to_client(message.root_directory) or None
        self.bands = BandTable(
            Band(
                band_number=b.band_number,
                raster_band=b.raster_band,
                path=self._to_client(b.path),
                data_path=b.data_path,
                root_directory=root,
                name=b.name,
                wavelength=b.wavelength,
                wavelength_unit=b.wavelength_unit,
                multiplicative_factor=b.multiplicative_factor,
                additive_factor=b.additive_factor,
                date=b.date or None,
                **_placement(b),
                x_count=b.width,
                y_count=b.height,
                crs=b.crs,
                data_type=b.data_type,
                nodata=b.nodata if b.HasField("nodata") else None,
            )
            for b in message.bands
        )

    # Remotior's attributes: changing one changes the band set, in the catalog or here,
    # checked by the server.
    @property
    def name(self) -> str:
        return self.message.display_name

    @name.setter
    def name(self, name: str) -> None:
        self._set("display_name", name or "")

    @property
    def date(self) -> str | None:
        return self.message.date or None

    @date.setter
    def date(self, date: str) -> None:
        self._set("date", date or "")

    @property
    def root_directory(self) -> str | None:
        return self._to_client(self.message.root_directory) or None

    @root_directory.setter
    def root_directory(self, root_directory: str) -> None:
        self._set("root_directory", self._to_server(root_directory or ""))

    @property
    def crs(self) -> str | None:
        return self.bands[0].crs if self.bands else None

    @property
    def sensor(self) -> str:
        return self.message.sensor

    @property
    def box_coordinate_list(self) -> list[float] | None:
        """Remotior's [left, top, right, bottom] that band tools given this band set clip
        its bands to, in the place of their `extent_list`; None for all of them."""
        return box_list(self.message)

    @box_coordinate_list.setter
    def box_coordinate_list(self, box_coordinate_list: list | None) -> None:
        changed = bandset_pb2.BandSet()
        _set_box(changed, box_coordinate_list)
        self._set("box", changed.box if changed.HasField("box") else None)

    def _set(self, field: str, value: Any) -> None:
        if self.catalog is not None:
            self._refresh(self.catalog._update(self.number, field_mask=[field], **{field: value}))
            return
        changed = bandset_pb2.BandSet()
        changed.CopyFrom(self.message)
        if value is None:
            changed.ClearField(field)
        elif isinstance(value, message_module.Message):
            getattr(changed, field).CopyFrom(value)
        else:
            setattr(changed, field, value)
        self._rebuild(changed, keep_sensor=field != "root_directory")

    def _set_bands(self, bands: Sequence[bandset_pb2.Band]) -> None:
        """Replace the bands (in this order), checked by the server."""
        if self.catalog is not None:
            self._refresh(self.catalog._set_bands(self.number, bands))
            return
        changed = bandset_pb2.BandSet()
        changed.CopyFrom(self.message)
        del changed.bands[:]
        changed.bands.extend(bands)
        self._rebuild(changed, keep_sensor=False)

    def _refresh(self, updated: BandSet) -> None:
        if updated is not self:  # an object the catalog no longer refreshes by its number
            self._take(updated.message)

    def _rebuild(self, message: bandset_pb2.BandSet, *, keep_sensor: bool) -> None:
        """Take `message`, a band set outside the catalog, once the server has built it by
        the rules of creation; its bands keep their order (the server sorts a new band
        set's bands by wavelength, stably: the order is put back)."""
        if self._session is None:
            raise TypeError("this BandSet has no session to check its changes")
        given = given_bandset(message)
        built = self._session.bandset_catalog._create(given, validate_only=True)
        order = sorted(range(len(given.bands)), key=lambda i: given.bands[i].wavelength)
        bands: list[bandset_pb2.Band] = [bandset_pb2.Band()] * len(order)
        for position, index in enumerate(order):
            band = bandset_pb2.Band()
            band.CopyFrom(built.bands[position])
            band.band_number = index + 1
            bands[index] = band
        del built.bands[:]
        built.bands.extend(bands)
        built.sensor = message.sensor if keep_sensor else ""
        self._take(built)

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
        return [self._to_client(band.data_path) for band in self.bands]

    def get_path(self, band_number: int) -> list[str]:
        return [band.path for band in self.bands if band.band_number == band_number]

    def get_absolute_path(self, band_number: int) -> str | None:
        paths = [band.data_path for band in self.bands if band.band_number == band_number]
        return self._to_client(paths[0]) if paths else None

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

    def find_values_in_list(
        self, attribute: str, value_list: Sequence[Any], output_attribute: str | None = None
    ) -> list[Any]:
        """For each value of `value_list` in turn, the bands whose `attribute` equals it:
        their `output_attribute` (their numbers when None), as Remotior lists them."""
        found = []
        for value in value_list:
            for band in self.bands:
                if getattr(band, attribute) == value:
                    found.append(getattr(band, output_attribute or "band_number"))
        return found

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

    # Remotior's changes of a BandSet's bands.
    def add_new_band(
        self,
        path: str,
        band_number: int | None = None,
        raster_band: int | None = None,
        band_name: str | None = None,
        date: str | None = None,
        root_directory: str | None = None,
        multiplicative_factor: float | None = None,
        additive_factor: float | None = None,
        wavelength: float | None = None,
        unit: str | None = None,
    ) -> None:
        """Add a band at `band_number` (after the last when None); its wavelength is its
        band number when None, as in Remotior. The band set's root directory applies
        (`root_directory` is not per band on the server)."""
        bands = list(self.message.bands)
        position = len(bands) + 1 if band_number is None else max(1, band_number)
        band = new_band(
            self._to_server(path),
            position,
            raster_band=raster_band,
            band_name=band_name,
            date=date,
            unit=unit,
            multiplicative_factor=multiplicative_factor,
            additive_factor=additive_factor,
            wavelength=wavelength,
        )
        bands.insert(position - 1, band)
        self._set_bands(bands)

    def sort_bands_by_wavelength(self) -> None:
        self._set_bands(bands_by_wavelength(self.message.bands))

    def sort_bands_by_name(self, keep_wavelength_order: bool | None = True) -> None:
        """Sort the bands by name; with `keep_wavelength_order`, the wavelengths stay in
        their positions, as in Remotior."""
        self._set_bands(bands_by_name(self.message.bands, bool(keep_wavelength_order)))

    # Remotior's tools run on the band set (`input_bands`).
    def _tools(self) -> Session:
        if self._session is None:
            raise TypeError("this BandSet has no session to run tools")
        return self._session

    def execute(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, input_bands=self, **kwargs)``, e.g. with ``rs.band_calc``; as in
        Remotior, an error is reported to the messages callback (and as a warning) and
        gives None."""
        kwargs["input_bands"] = self
        try:
            return function(*args, **kwargs)
        except Exception as error:  # Remotior's execute reports any error and goes on
            warnings.warn(f"{getattr(function, '__name__', function)}: {error}", stacklevel=2)
            callback = getattr(self._session, "messages_callback", None)
            if hasattr(callback, "error"):
                callback.error(str(error))
            return None

    def calc(self, *args: Any, **kwargs: Any) -> Any:
        """``rs.band_calc`` with this band set as `input_bands` (``"b1"``, ``"#NIR#"``...)."""
        kwargs["input_bands"] = self
        return self._tools().band_calc(*args, **kwargs)

    def sieve(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["input_bands"] = self
        return self._tools().band_sieve(*args, **kwargs)

    def dilation(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["input_bands"] = self
        return self._tools().band_dilation(*args, **kwargs)

    def erosion(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["input_bands"] = self
        return self._tools().band_erosion(*args, **kwargs)


def bandset_class(session: Session) -> type[BandSet]:
    """Remotior's ``rs.bandset``: the BandSet class bound to `session`, whose `create` makes
    band sets outside the catalog on its server."""
    return type("BandSet", (BandSet,), {"session": session, "__module__": __name__})


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
            kind = getattr(self._session, "bandset", BandSet)  # rs.bandset, Remotior's class
            known = self._objects[message.bandset_number] = kind(message, self)
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

    def _create(
        self,
        given: bandset_pb2.BandSet,
        *,
        number: int = 0,
        insert: bool = False,
        folder: str = "",
        name_filter: str = "",
        validate_only: bool = False,
    ) -> bandset_pb2.BandSet:
        """CreateBandSet: at `number` (0 appends), or, with `validate_only`, a band set
        outside the catalog."""
        return self._stub.CreateBandSet(
            bandset_pb2.CreateBandSetRequest(
                parent=self._session.name,
                bandset=given,
                bandset_number=number,
                insert=insert,
                folder=folder,
                name_filter=name_filter,
                validate_only=validate_only,
            ),
            metadata=self._session._metadata,
        )

    def _list_folder(self, folder: str, name_filter: str, root_directory: str) -> list[str]:
        """The files the server takes from `folder` for a band set, in its order."""
        built = self._create(
            bandset_pb2.BandSet(root_directory=root_directory),
            folder=folder,
            name_filter=name_filter,
            validate_only=True,
        )
        return list(dict.fromkeys(b.path for b in built.bands))  # a multiband file once

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

    def get_box_coordinate_list(self, bandset_number: int | None = None) -> list[float] | None:
        """The band set's [left, top, right, bottom] (the current one's when no number is
        given); None when it has none, or there is no such band set."""
        bandset = self.get_bandset(bandset_number)
        return None if bandset is None else bandset.box_coordinate_list

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
        given, folder, name_filter = describe_bandset(
            self._to_server,
            paths,
            band_names,
            wavelengths,
            unit,
            multiplicative_factors,
            additive_factors,
            date,
            root_directory,
            bandset_name,
            list_folder=self._list_folder,
            date_argument="date",
        )
        _set_box(given, box_coordinate_list)
        number = self.current_bandset if bandset_number is None else bandset_number
        message = self._create(
            given,
            number=max(number, 1),
            insert=bool(insert),
            folder=folder,
            name_filter=name_filter,
        )
        if insert:
            self._renumbered()
        return self._object(message)

    def add_bandset(
        self,
        bandset: BandSet,
        bandset_number: int | None = None,
        insert: bool = False,
        keep_uid: bool = False,
    ) -> BandSet:
        """Add a copy of `bandset`, e.g. one made by ``rs.bandset.create``, to the catalog
        (Remotior's `add_bandset`): at `bandset_number` (the current when None), replacing
        the band set there or, with `insert`, moving it and those after it up; a number
        past the last appends it. The server checks its files again; `bandset` itself stays
        as it is. Returns the catalog's band set (Remotior returns None). `keep_uid` is
        accepted: band sets of the catalog are named by their numbers."""
        if not isinstance(bandset, BandSet):
            raise TypeError(f"add_bandset takes a BandSet, got {type(bandset).__name__}")
        given = given_bandset(bandset.message)
        given.sensor = bandset.message.sensor  # set only while the bands have its wavelengths
        number = self.current_bandset if bandset_number is None else bandset_number
        message = self._create(given, number=max(number, 1), insert=bool(insert))
        if insert:
            self._renumbered()
        added = self._object(message)
        if [_key(b) for b in message.bands] != [_key(b) for b in given.bands]:
            # a new band set's bands are sorted by wavelength: keep the order it had
            self._set_bands(added.number, given.bands)
        return added

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
        self._object(self._message(bandset_number)).add_new_band(
            path,
            band_number,
            raster_band,
            band_name,
            date,
            root_directory,
            multiplicative_factor,
            additive_factor,
            wavelength,
            unit,
        )

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
        self._set_bands(message.bandset_number, bands_by_wavelength(message.bands))

    def sort_bands_by_name(
        self, bandset_number: int | None = None, keep_wavelength_order: bool | None = True
    ) -> None:
        message = self._message(bandset_number)
        bands = bands_by_name(message.bands, bool(keep_wavelength_order))
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


def _set_box(message: bandset_pb2.BandSet, box_coordinate_list: list | None) -> None:
    """Remotior's `box_coordinate_list` [left, top, right, bottom] as the message's box
    (None: no box); the server checks its edges."""
    if box_coordinate_list is None:
        message.ClearField("box")
        return
    values = list(box_coordinate_list)
    if len(values) != 4:
        raise ValueError(
            f"box_coordinate_list must be [left, top, right, bottom], got {box_coordinate_list!r}"
        )
    left, top, right, bottom = (float(v) for v in values)
    message.box.CopyFrom(bandset_pb2.Extent(left=left, top=top, right=right, bottom=bottom))


def box_list(message: bandset_pb2.BandSet) -> list[float] | None:
    """A band set message's box as Remotior's [left, top, right, bottom]; None without."""
    if not message.HasField("box"):
        return None
    box = message.box
    return [box.left, box.top, box.right, box.bottom]


def given_bandset(message: bandset_pb2.BandSet) -> bandset_pb2.BandSet:
    """A band set the server answered, as a client gives it: name, date, root directory,
    box and each band's own fields (path, band, name, wavelength, factors, date), without
    what the server adds (numbers, data paths, sizes)."""
    return bandset_pb2.BandSet(
        display_name=message.display_name,
        date=message.date,
        root_directory=message.root_directory,
        box=message.box if message.HasField("box") else None,
        bands=[
            bandset_pb2.Band(
                path=b.path,
                raster_band=b.raster_band,
                name=b.name,
                wavelength=b.wavelength,
                wavelength_unit=b.wavelength_unit,
                multiplicative_factor=b.multiplicative_factor,
                additive_factor=b.additive_factor,
                date=b.date,
            )
            for b in message.bands
        ],
    )


def new_band(
    path: str,
    position: int,
    *,
    raster_band: int | None,
    band_name: str | None,
    date: str | None,
    unit: str | None,
    multiplicative_factor: float | None,
    additive_factor: float | None,
    wavelength: float | None,
) -> bandset_pb2.Band:
    """A band added at `position` (Remotior's `add_new_band`, `add_band_to_bandset`): its
    wavelength is its position, in band numbers, when None."""
    band = bandset_pb2.Band(
        path=path,
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
    return band


def bands_by_wavelength(bands: Sequence[bandset_pb2.Band]) -> list[bandset_pb2.Band]:
    return sorted(bands, key=lambda b: b.wavelength)


def bands_by_name(
    bands: Sequence[bandset_pb2.Band], keep_wavelength_order: bool
) -> list[bandset_pb2.Band]:
    """The bands sorted by name; with `keep_wavelength_order`, the wavelengths stay in
    their positions, as in Remotior."""
    old = [(b.wavelength, b.wavelength_unit) for b in bands]
    ordered = sorted(bands, key=lambda b: b.name)
    if keep_wavelength_order:
        ordered = [_with_wavelength(b, *old[i]) for i, b in enumerate(ordered)]
    return ordered


def describe_bandset(
    to_server: Callable[[str], str],
    paths: Any,
    band_names: Any,
    wavelengths: Any,
    unit: str | None,
    multiplicative_factors: Any,
    additive_factors: Any,
    date: Any,
    root_directory: str | None,
    name: str | None,
    *,
    list_folder: Callable[[str, str, str], list[str]],
    date_argument: str = "dates",
) -> tuple[bandset_pb2.BandSet, str, str]:
    """Remotior's creation arguments (`BandSet.create`, `create_bandset`) as the server
    takes them: the band set, and the folder and name filter whose GeoTIFFs are its bands
    (empty when the files are listed). A folder given with values per band (names,
    wavelengths, factors, dates) is listed first, by the server (`list_folder`: folder,
    name filter and root directory, as the server names them), so that each file takes
    its values as in Remotior. Lists shorter than the files are refused, as Remotior
    fails on them."""
    folder, name_filter, files = _sources(paths)
    if isinstance(band_names, str):
        band_names = [band_names]  # Remotior's one file with one name
    if isinstance(date, str | type(None)):
        dates = None
    elif isinstance(date, list | tuple):
        dates = [str(d) for d in date]
    else:
        raise TypeError(f"{date_argument} must be a date, a list of dates or 'auto', got {date!r}")
    sensor, wavelength_list = _wavelengths(wavelengths)
    single_date = date if isinstance(date, str) else ""
    if single_date.lower() == DATE_AUTO:
        single_date = _folder_date(folder or "")
    root = to_server(root_directory) if root_directory else ""
    server_folder = to_server(folder) if folder else ""
    per_band = (band_names, wavelength_list, multiplicative_factors, additive_factors, dates)
    if folder and (single_date or any(values is not None for values in per_band)):
        files = list_folder(server_folder, name_filter or "", root)  # as the server names them
        server_folder = name_filter = ""
    elif files:
        files = [to_server(path) for path in files]
    if files:
        for label, values in (
            ("band_names", band_names),
            ("multiplicative_factors", multiplicative_factors),
            ("additive_factors", additive_factors),
            (date_argument, dates),
        ):
            if values is not None and len(values) < len(files):
                raise ValueError(f"{label} lists {len(values)} values for {len(files)} files")
    bands = []
    for i, path in enumerate(files):
        band = bandset_pb2.Band(
            path=path,
            name=str(_item(band_names, i) or ""),
            wavelength_unit=unit or "",
            date=(_item(dates, i) if dates else single_date) or "",
        )
        if _item(wavelength_list, i) is not None:
            band.wavelength = wavelength_list[i]
            band.wavelength_unit = unit or NO_UNIT
        if _item(multiplicative_factors, i) is not None:
            band.multiplicative_factor = float(multiplicative_factors[i])
        if _item(additive_factors, i) is not None:
            band.additive_factor = float(additive_factors[i])
        bands.append(band)
    given = bandset_pb2.BandSet(
        display_name=name or "",
        date=(dates[-1] if dates else single_date) or "",
        root_directory=root,
        bands=bands,
        sensor=sensor or "",
    )
    return given, server_folder, name_filter or ""


def _key(band: bandset_pb2.Band) -> tuple[str, int, str]:
    return band.path, band.raster_band, band.name


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
    if isinstance(paths, os.PathLike):
        paths = os.fspath(paths)
    if isinstance(paths, str):
        return (None, None, [paths]) if _is_file(paths) else (paths, None, [])
    if not isinstance(paths, list | tuple) or not all(
        isinstance(p, str | os.PathLike) for p in paths
    ):
        raise TypeError(
            "paths must be a file, a folder, a list of files or [folder, name filter], "
            f"got {paths!r}"
        )
    paths = [os.fspath(p) for p in paths]
    if 1 <= len(paths) <= 2 and not _is_file(paths[0]) and not any(map(_is_file, paths[1:])):
        name_filter = str(paths[1]).strip("'").strip() if len(paths) == 2 else None
        return str(paths[0]), name_filter, []
    return None, None, [str(path) for path in paths]


def _wavelengths(wavelengths: Any) -> tuple[str | None, list[float] | None]:
    """(sensor, wavelength list) from Remotior's `wavelengths`."""
    if wavelengths is None:
        return None, None
    if isinstance(wavelengths, str):
        return wavelengths, None
    values = list(wavelengths)
    if len(values) == 1 and isinstance(values[0], str):
        try:
            return None, [float(values[0])]
        except ValueError:
            return values[0], None
    try:
        return None, [float(value) for value in values]
    except (TypeError, ValueError):
        raise ValueError(
            f"wavelengths must list a center wavelength per band, or name a sensor "
            f"(['Sentinel-2']), got {wavelengths!r}"
        ) from None


def _folder_date(folder: str) -> str:
    """Remotior's ``date="auto"``: the date in a folder's name (``S2_2020-01-01``)."""
    found = _FOLDER_DATE.search(folder.rstrip("/").rsplit("/", 1)[-1])
    return "-".join(found.groups()) if found else ""
