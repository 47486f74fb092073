"""VRTs: the virtual outputs rsgrpc writes, and the plain VRT inputs it reads itself.

A virtual output is `name.vrt`, the path Remotior returns for it, and the GeoTIFF it
reads, `name_01.tif`, beside it (Remotior's VRT reads the parts its processes wrote;
rsgrpc writes one), named relative to the VRT so the pair can move together.

A VRT input never reaches GDAL: GDAL has no VRT driver in rsgrpc's processes. rsgrpc
parses the file itself (at most `MAX_VRT_BYTES`, expat with no DTD, no entity and no
processing instruction), accepts a small, plain subset of the format (`parse_vrt`) and
reads each source through its own confinement and GeoTIFF-only opening, at the moment
of use (`rsgrpc.engine.raster_io`). What GDAL opens is therefore always a file rsgrpc
opened under a data root and GDAL's GTiff driver accepted, never a name from the VRT.

Accepted: a `VRTDataset` (no subClass) with `SRS` (WKT or `EPSG:n`), `GeoTransform`,
`Metadata` and `Description` (ignored), and `VRTRasterBand`s (no subClass) of a data
type from Byte to Float64 with `NoDataValue`, `ColorInterp`, `Description`, `UnitType`,
`Metadata` (ignored but for the nodata value) and `SimpleSource` or `ComplexSource`
entries. A source names a GeoTIFF (`SourceFilename`, relative to the VRT's folder with
`relativeToVRT="1"`, else a path as a client writes it), an integer `SourceBand`, a
`SrcRect` and a `DstRect` of whole pixels and equal sizes (no resampling), and, for a
`ComplexSource`, `NODATA` (source pixels of that value are transparent) and a neutral
`ScaleOffset` 0 and `ScaleRatio` 1. A source's data type must fit the band's without
rounding or clamping, its `SrcRect` lie inside its file and its `DstRect` inside the
VRT (GDAL would pad or clip them). Anything else (derived bands and pixel functions, warped,
processed or pansharpened datasets, masks, overviews, kernel-filtered or averaged
sources, open options, LUTs, `/vsi*` names, URLs and other connection strings, nested
VRTs) is refused.
"""

from __future__ import annotations

import math
import re
import threading
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from xml.parsers import expat

import numpy as np

from rsgrpc.engine.errors import InvalidArgumentError, RsgrpcError
from rsgrpc.engine.paths import DataPath

MAX_VRT_BYTES = 1 << 20
MAX_ELEMENTS = 50_000
MAX_DEPTH = 8
MAX_BANDS = 256
MAX_SOURCES = 4096
MAX_SOURCE_FILES = 256
VRT_SUFFIX = ".vrt"
PART_SUFFIX = "_01.tif"
_TIFF_SUFFIXES = (".tif", ".tiff")
_GDAL_TYPES = {
    "Byte": "uint8",
    "Int8": "int8",
    "UInt16": "uint16",
    "Int16": "int16",
    "UInt32": "uint32",
    "Int32": "int32",
    "Float32": "float32",
    "Float64": "float64",
}
_TYPE_NAMES = {dtype: name for name, dtype in _GDAL_TYPES.items()}
# Descriptive elements that change no pixel: accepted and not read.
_IGNORED_DATASET = frozenset({"Metadata", "Description"})
_IGNORED_BAND = frozenset({"Metadata", "Description", "ColorInterp", "UnitType"})
_SOURCE_CHILDREN = frozenset(
    {"SourceFilename", "SourceBand", "SourceProperties", "SrcRect", "DstRect"}
)
_COMPLEX_CHILDREN = _SOURCE_CHILDREN | {"NODATA", "ScaleOffset", "ScaleRatio"}
# A scheme or GDAL connection string ('http:', 'GTIFF_DIR:', 'NETCDF:'): never a file name.
_CONNECTION = re.compile(r"^[A-Za-z][A-Za-z0-9_+.-]*:")


def is_vrt_path(path: str) -> bool:
    """Whether `path` names a VRT (by its extension, any case)."""
    return path.lower().endswith(VRT_SUFFIX)


def virtual_path(path: str) -> str:
    """The VRT a virtual output named `path` becomes: a .tif/.tiff/.vrt extension (any case)
    replaced by .vrt, any other path with .vrt added."""
    pure = PurePosixPath(path)
    if pure.suffix.lower() in (*_TIFF_SUFFIXES, VRT_SUFFIX):
        return str(pure.with_suffix(VRT_SUFFIX))
    return path + VRT_SUFFIX


def part_name(vrt_name: str) -> str:
    """The name of the GeoTIFF beside a virtual output named `vrt_name`."""
    return vrt_name[: -len(VRT_SUFFIX)] + PART_SUFFIX


def virtual_part(output: DataPath) -> DataPath:
    """The GeoTIFF a virtual output `output` (a .vrt) reads, beside it."""
    return output.beside(part_name(output.name))


def output_files(output: DataPath) -> tuple[DataPath, ...]:
    """The files an output path makes: itself, and for a VRT its GeoTIFF beside it."""
    return (output, virtual_part(output)) if is_vrt_path(output.name) else (output,)


def virtual_raster_xml(
    *,
    part: str,
    width: int,
    height: int,
    dtype: str,
    nodata: float | None,
    crs: str,
    transform: tuple[float, ...],
    block_shape: tuple[int, int],
) -> bytes:
    """The text of a virtual output: one band, one SimpleSource, the GeoTIFF `part` named
    relative to the VRT."""
    root = ElementTree.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs:
        ElementTree.SubElement(root, "SRS").text = crs
    a, b, c, d, e, f = transform[:6]
    ElementTree.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (c, a, b, f, d, e)
    )
    band = ElementTree.SubElement(root, "VRTRasterBand", dataType=_TYPE_NAMES[dtype], band="1")
    if nodata is not None:
        ElementTree.SubElement(band, "NoDataValue").text = _number_text(nodata)
    source = ElementTree.SubElement(band, "SimpleSource")
    ElementTree.SubElement(source, "SourceFilename", relativeToVRT="1").text = part
    ElementTree.SubElement(source, "SourceBand").text = "1"
    ElementTree.SubElement(
        source,
        "SourceProperties",
        RasterXSize=str(width),
        RasterYSize=str(height),
        DataType=_TYPE_NAMES[dtype],
        BlockXSize=str(block_shape[1]),
        BlockYSize=str(block_shape[0]),
    )
    rect = {"xOff": "0", "yOff": "0", "xSize": str(width), "ySize": str(height)}
    ElementTree.SubElement(source, "SrcRect", rect)
    ElementTree.SubElement(source, "DstRect", rect)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8") + b"\n"


def _number_text(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True)
class Rect:
    """A rectangle of whole pixels: column and row offsets, width and height."""

    col: int
    row: int
    width: int
    height: int


@dataclass(frozen=True)
class VirtualSource:
    """One source of a VRT band: a band of a GeoTIFF, its window and where it goes."""

    path: DataPath
    band: int
    source: Rect
    destination: Rect
    nodata: float | None = None  # a ComplexSource's NODATA: transparent source pixels
    index: int = 0  # 1-based, in the file's order: errors name a source by it


@dataclass(frozen=True)
class VirtualBand:
    dtype: str
    nodata: float | None
    sources: tuple[VirtualSource, ...]


@dataclass(frozen=True)
class VirtualRaster:
    """A VRT as rsgrpc reads it: accepted by `parse_vrt`, its sources confined."""

    width: int
    height: int
    crs: str  # WKT, as GDAL gives it for a GeoTIFF; empty for none
    transform: tuple[float, ...]  # affine order (a, b, c, d, e, f)
    bands: tuple[VirtualBand, ...]
    files: tuple[DataPath, ...] = field(default=())  # every distinct source file


class _Refused(Exception):
    """Why a VRT is refused, in the words the client's message ends with."""


class _Element:
    __slots__ = ("tag", "attributes", "children", "text")

    def __init__(self, tag: str, attributes: dict[str, str]) -> None:
        self.tag = tag
        self.attributes = attributes
        self.children: list[_Element] = []
        self.text = ""

    def child(self, tag: str) -> _Element | None:
        found = [c for c in self.children if c.tag == tag]
        if len(found) > 1:
            raise _Refused(f"<{self.tag}> has {len(found)} <{tag}> elements")
        return found[0] if found else None


def _parse_xml(data: bytes) -> _Element:
    """The element tree of `data`, read by expat with nothing resolved or declared."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Element] = []
    roots: list[_Element] = []
    count = 0

    def refuse_doctype(*_args: object) -> None:
        raise _Refused("it has a DOCTYPE; DTDs and entities are not read")

    def refuse_instruction(*_args: object) -> None:
        raise _Refused("it has a processing instruction")

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            raise _Refused(f"it has more than {MAX_ELEMENTS} elements")
        if len(stack) >= MAX_DEPTH:
            raise _Refused(f"its elements nest more than {MAX_DEPTH} deep")
        element = _Element(tag, attributes)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.UnparsedEntityDeclHandler = refuse_doctype
    parser.NotationDeclHandler = refuse_doctype
    parser.ExternalEntityRefHandler = refuse_doctype
    parser.ProcessingInstructionHandler = refuse_instruction
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise _Refused(f"it is not well-formed XML ({expat.ErrorString(error.code)})") from None
    return roots[0]


def parse_vrt(data: bytes, vrt: DataPath) -> VirtualRaster:
    """The VRT `data`, read from `vrt`, if it is one rsgrpc reads (see the module's
    docstring); its sources confined as paths under the data roots, not yet opened.

    Raises InvalidArgumentError naming `vrt` as the client does and what is refused.
    """
    try:
        if len(data) > MAX_VRT_BYTES:
            raise _Refused(f"it is over {MAX_VRT_BYTES >> 10} KiB")
        return _read_dataset(_parse_xml(data), vrt)
    except _Refused as refused:
        raise InvalidArgumentError(
            f"{vrt.field} {vrt.path!r} is not a VRT that rsgrpc reads: {refused}; a VRT "
            "input holds plain SimpleSource or ComplexSource bands of GeoTIFFs under the "
            "data roots",
            metadata={"path": vrt.path},
        ) from None


def _read_dataset(root: _Element, vrt: DataPath) -> VirtualRaster:
    if root.tag != "VRTDataset":
        raise _Refused(f"its root element is <{root.tag}>, not <VRTDataset>")
    _only_attributes(root, {"rasterXSize", "rasterYSize"})
    width = _positive(root, "rasterXSize")
    height = _positive(root, "rasterYSize")
    crs, transform = "", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    bands: list[VirtualBand] = []
    files: dict[DataPath, None] = {}
    sources = 0
    for child in root.children:
        if child.tag in _IGNORED_DATASET:
            continue
        if child.tag == "SRS":
            _only_attributes(child, {"dataAxisToSRSAxisMapping"})
            crs = _crs(child.text.strip())
        elif child.tag == "GeoTransform":
            transform = _geotransform(child.text)
        elif child.tag == "VRTRasterBand":
            if len(bands) >= MAX_BANDS:
                raise _Refused(f"it has more than {MAX_BANDS} bands")
            band = _read_band(child, len(bands) + 1, vrt, first_index=sources + 1)
            for item in band.sources:
                dst = item.destination
                if (
                    dst.col < 0
                    or dst.row < 0
                    or dst.col + dst.width > width
                    or dst.row + dst.height > height
                ):
                    raise _Refused(f"source {item.index}'s <DstRect> is not inside the raster")
            sources += len(band.sources)
            if sources > MAX_SOURCES:
                raise _Refused(f"it has more than {MAX_SOURCES} sources")
            files.update(dict.fromkeys(s.path for s in band.sources))
            if len(files) > MAX_SOURCE_FILES:
                raise _Refused(f"it reads more than {MAX_SOURCE_FILES} files")
            bands.append(band)
        else:
            raise _Refused(f"<VRTDataset> holds <{child.tag}>, which rsgrpc does not read")
    if not bands:
        raise _Refused("it has no band")
    return VirtualRaster(width, height, crs, transform, tuple(bands), tuple(files))


def _read_band(element: _Element, number: int, vrt: DataPath, *, first_index: int) -> VirtualBand:
    if "subClass" in element.attributes:
        raise _Refused(
            f"band {number} is a {element.attributes['subClass']}: derived bands, pixel "
            "functions and other band kinds are not read"
        )
    _only_attributes(element, {"dataType", "band", "blockXSize", "blockYSize"})
    given = element.attributes.get("band")
    if given is not None and given.strip() != str(number):
        raise _Refused(f"band {number} is numbered {given!r}")
    type_name = element.attributes.get("dataType", "Byte")
    if type_name not in _GDAL_TYPES:
        raise _Refused(f"band {number} is of type {type_name!r}; use Byte to Float64")
    dtype = _GDAL_TYPES[type_name]
    nodata = None
    sources: list[VirtualSource] = []
    for child in element.children:
        if child.tag in _IGNORED_BAND:
            continue
        if child.tag == "NoDataValue":
            nodata = _number(child, f"band {number} NoDataValue")
        elif child.tag in ("SimpleSource", "ComplexSource"):
            sources.append(_read_source(child, number, vrt, index=first_index + len(sources)))
        else:
            raise _Refused(f"band {number} holds <{child.tag}>, which rsgrpc does not read")
    if nodata is not None and not _holds(dtype, nodata):
        raise _Refused(f"band {number}'s NoDataValue {nodata:g} is not a value of {dtype}")
    return VirtualBand(dtype, nodata, tuple(sources))


def _holds(dtype: str, value: float) -> bool:
    """Whether a pixel of `dtype` holds `value` exactly."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return not math.isfinite(value) or abs(value) <= float(np.finfo(dtype).max)
    limits = np.iinfo(dtype)
    return math.isfinite(value) and value == int(value) and limits.min <= value <= limits.max


def check_source_type(vrt: DataPath, source: VirtualSource, source_dtype: str, dtype: str) -> None:
    """Refuse a source whose values the band's type cannot hold exactly: GDAL would
    round and clamp them, which rsgrpc does not do on its own reading."""
    if not np.can_cast(source_dtype, dtype, "safe"):
        raise InvalidArgumentError(
            f"{vrt.field} {vrt.path!r}: source {source.index} is {source_dtype}, which its "
            f"band's type {dtype} cannot hold without rounding or clamping",
            metadata={"path": vrt.path},
        )


def check_source_rect(vrt: DataPath, source: VirtualSource, width: int, height: int) -> None:
    """Refuse a source whose SrcRect is not inside its file's `width` x `height` pixels
    (GDAL would pad it; a plain VRT reads pixels that exist)."""
    src = source.source
    if src.col < 0 or src.row < 0 or src.col + src.width > width or src.row + src.height > height:
        raise InvalidArgumentError(
            f"{vrt.field} {vrt.path!r}: source {source.index}'s <SrcRect> is not inside its "
            f"file's {width} x {height} pixels",
            metadata={"path": vrt.path},
        )


def _read_source(element: _Element, number: int, vrt: DataPath, *, index: int) -> VirtualSource:
    where = f"source {index} (band {number})"
    allowed = _COMPLEX_CHILDREN if element.tag == "ComplexSource" else _SOURCE_CHILDREN
    _only_attributes(element, {"resampling"})
    for child in element.children:
        if child.tag not in allowed:
            raise _Refused(f"{where} holds <{child.tag}>, which rsgrpc does not read")
    filename = element.child("SourceFilename")
    if filename is None:
        raise _Refused(f"{where} has no <SourceFilename>")
    _only_attributes(filename, {"relativeToVRT", "shared"})
    path = _source_path(filename, vrt, where)
    band_element = element.child("SourceBand")
    band = 1 if band_element is None else _integer(band_element.text, f"{where} SourceBand")
    if band < 1:
        raise _Refused(f"{where} reads band {band}")
    source_rect, destination = element.child("SrcRect"), element.child("DstRect")
    if source_rect is None or destination is None:
        raise _Refused(f"{where} needs both <SrcRect> and <DstRect>")
    src, dst = _rect(source_rect, where), _rect(destination, where)
    if (src.width, src.height) != (dst.width, dst.height):
        raise _Refused(f"{where} is resampled (SrcRect and DstRect differ in size)")
    nodata = None
    if element.tag == "ComplexSource":
        offset, ratio = element.child("ScaleOffset"), element.child("ScaleRatio")
        if offset is not None and _number(offset, f"{where} ScaleOffset") != 0:
            raise _Refused(f"{where} is scaled (ScaleOffset)")
        if ratio is not None and _number(ratio, f"{where} ScaleRatio") != 1:
            raise _Refused(f"{where} is scaled (ScaleRatio)")
        nodata_element = element.child("NODATA")
        if nodata_element is not None:
            nodata = _number(nodata_element, f"{where} NODATA")
    return VirtualSource(path, band, src, dst, nodata, index)


def _source_path(element: _Element, vrt: DataPath, where: str) -> DataPath:
    """The source's file as a data path: beside the VRT, or as a client path; the name is
    the file's own text, so messages name the source by its number, not its name."""
    name = element.text.strip()
    if not name:
        raise _Refused(f"{where} names no file")
    if name.lower().startswith("/vsi") or _CONNECTION.match(name):
        raise _Refused(
            f"{where} is a URL, a /vsi path or a connection string; sources are files "
            "under the data roots"
        )
    relative = element.attributes.get("relativeToVRT", "0").strip()
    if relative not in ("0", "1"):
        raise _Refused(f"{where} has relativeToVRT={relative!r}")
    field = f"{vrt.field} {vrt.path!r} {where}"
    try:
        if relative == "1" and not PurePosixPath(name).is_absolute():
            path = vrt.beside(name, field=field)
        elif vrt.roots is not None:
            path = vrt.roots.path(name, field=field)
        else:
            raise _Refused(f"{where} is not named relative to the VRT")
    except RsgrpcError as error:
        raise _Refused(f"{where} is not a path under the data roots ({_reason(error)})") from None
    if is_vrt_path(path.name):
        raise _Refused(f"{where} is a VRT; VRTs of VRTs are not read")
    return path


def _reason(error: RsgrpcError) -> str:
    """Why a source's path was refused, without repeating its text (the message names
    the source by number)."""
    message = error.message
    if "'..'" in message or "does not stay under" in message:
        return "it leads out of its folder with '..'"
    if "outside the server's data roots" in message or "not a path under" in message:
        return "it is outside the server's data roots"
    if "symbolic link" in message:
        return "it passes through a symbolic link"
    return "its name is not a valid path"


def _only_attributes(element: _Element, allowed: set[str]) -> None:
    for name in element.attributes:
        if name not in allowed:
            raise _Refused(f"<{element.tag}> has attribute {name!r}, which rsgrpc does not read")


def _positive(element: _Element, name: str) -> int:
    value = _integer(element.attributes.get(name, ""), f"<{element.tag}> {name}")
    if value < 1:
        raise _Refused(f"<{element.tag}> {name} is {value}")
    return value


def _integer(text: str, what: str) -> int:
    try:
        value = float(text.strip())
    except ValueError:
        raise _Refused(f"{what} is not a number") from None
    if not math.isfinite(value) or value != int(value) or abs(value) > 1 << 31:
        raise _Refused(f"{what} is not a whole number of pixels")
    return int(value)


def _number(element: _Element, what: str) -> float:
    try:
        return float(element.text.strip())
    except ValueError:
        raise _Refused(f"{what} is not a number") from None


def _rect(element: _Element, where: str) -> Rect:
    _only_attributes(element, {"xOff", "yOff", "xSize", "ySize"})
    what = f"{where} <{element.tag}>"
    col, row, width, height = (
        _integer(element.attributes.get(key, ""), f"{what} {key}")
        for key in ("xOff", "yOff", "xSize", "ySize")
    )
    if width < 1 or height < 1:
        raise _Refused(f"{what} is empty")
    return Rect(col, row, width, height)


def _crs(text: str) -> str:
    """The SRS as WKT; only WKT and EPSG codes are read (a name GDAL would look up as a
    file or a URL is not)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if not text:
        return ""
    try:
        match = re.fullmatch(r"EPSG:(\d{1,6})", text, flags=re.IGNORECASE)
        crs = CRS.from_epsg(int(match.group(1))) if match else CRS.from_wkt(text)
    except CRSError:
        raise _Refused("its SRS is neither WKT nor an EPSG code") from None
    return crs.to_wkt()


def _geotransform(text: str) -> tuple[float, ...]:
    parts = text.split(",")
    try:
        c, a, b, f, d, e = (float(p) for p in parts)
    except ValueError:
        raise _Refused("its GeoTransform is not six numbers") from None
    return (a, b, c, d, e, f)


# Parsed VRTs by their path and the file's (device, inode, size, modification and
# change times): a tile's read walks and opens the path again, and parses only a file
# it has not seen.
_PARSED: OrderedDict[tuple, VirtualRaster] = OrderedDict()
_PARSED_LOCK = threading.Lock()
_PARSED_KEPT = 64


def parsed(vrt: DataPath, identity: tuple[int, ...], read: Callable[[], bytes]) -> VirtualRaster:
    """`parse_vrt` of the file `vrt` open now as `identity`, read by `read()` only when it
    was not parsed before."""
    key = (vrt.identity, identity)
    with _PARSED_LOCK:
        found = _PARSED.get(key)
        if found is not None:
            _PARSED.move_to_end(key)
            return found
    raster = parse_vrt(read(), vrt)
    with _PARSED_LOCK:
        _PARSED[key] = raster
        while len(_PARSED) > _PARSED_KEPT:
            _PARSED.popitem(last=False)
    return raster
