"""Remotior Sensus' signatures, declared once: the client's methods are generated from them.

Each entry lists a method's parameters exactly as Remotior Sensus 0.7.5 declares them
(names, order, defaults), then rsgrpc's own keyword-only additions, then, for every
parameter that cannot mean on a server what it means in Remotior, a note with the
reason. The notes are what the README's compatibility table is made of
(`compatibility_rows`); parameters without a note are supported as Remotior defines them.

One binder (`remotior_method`) turns a call's positional and keyword arguments into a
mapping of every parameter, so no method repeats argument handling.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

REQUIRED: Any = inspect.Parameter.empty

Status = Literal["differs", "not applicable", "not yet"]


@dataclass(frozen=True)
class Note:
    """Why a parameter does not hold Remotior's meaning on a server.

    ``differs``: accepted and used, with the difference in `reason`.
    ``not applicable``: accepted and has no effect (it concerns the local machine).
    ``not yet``: accepted at its default; another value is refused (a tool returns
    ``check=False`` naming the parameter) because the server cannot do it yet.
    """

    status: Status
    reason: str


@dataclass(frozen=True)
class MethodSpec:
    """One method: Remotior's parameters in order, rsgrpc's keyword-only additions, notes."""

    name: str
    remotior: tuple[tuple[str, Any], ...]
    extensions: tuple[tuple[str, Any], ...] = ()
    notes: Mapping[str, Note] = field(default_factory=dict)

    def signature(self) -> inspect.Signature:
        """The method's signature, `self` first."""
        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
        keyword = inspect.Parameter.KEYWORD_ONLY
        return inspect.Signature(
            [
                inspect.Parameter("self", positional),
                *(inspect.Parameter(n, positional, default=d) for n, d in self.remotior),
                *(inspect.Parameter(n, keyword, default=d) for n, d in self.extensions),
            ]
        )

    def refusal(self, arguments: Mapping[str, Any]) -> str | None:
        """Why a call cannot run yet: the first ``not yet`` parameter given another value
        than Remotior's default."""
        defaults = dict(self.remotior)
        for name, note in self.notes.items():
            if note.status == "not yet" and arguments[name] != defaults[name]:
                return f"{self.name}: {name} is not supported by the server yet ({note.reason})"
        return None


def remotior_method(spec: MethodSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give `implementation(self, arguments)` the signature in `spec`: the method binds
    its call against it and passes every parameter, defaults applied, as one mapping."""
    signature = spec.signature()

    def decorate(implementation: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(implementation)
        def method(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            return implementation(arguments.pop("self"), arguments)

        method.__signature__ = signature  # type: ignore[attr-defined]
        return method

    return decorate


_NOT_APPLICABLE_LOCAL = {
    "smtp_server": "notifications are the caller's to send: the server sends no e-mail",
    "smtp_user": "notifications are the caller's to send: the server sends no e-mail",
    "smtp_password": "notifications are the caller's to send: the server sends no e-mail",
    "smtp_recipients": "notifications are the caller's to send: the server sends no e-mail",
    "smtp_notification": "notifications are the caller's to send: the server sends no e-mail",
    "sound_notification": "the server plays no sound",
    "log_stream_handler": "the log is the server's: read it with `log()`",
    "temporary_directory": "the server keeps each session's temporary directory under its "
    "own temporary root (its path is `configurations.temporary_directory`)",
}
_SESSION_NOTES = {
    "n_processes": Note(
        "differs",
        "the session's worker processes on the server; more than the server allows is "
        "clamped to its maximum with a warning",
    ),
    "available_ram": Note(
        "differs",
        "the session's RAM budget on the server, in MB (under 1000: GB, as in Remotior); "
        "more than the server has left is clamped with a warning",
    ),
    "progress_callback": Note(
        "differs",
        "called with Remotior's keyword arguments (process, step, message, percentage, "
        "elapsed_time, previous_step, start/end/failed/ping) from the server's progress, "
        "whose steps are units of work done (rsgrpc's own OperationMetadata goes to the "
        "keyword-only operation_callback); by default nothing is printed",
    ),
    **{name: Note("not applicable", reason) for name, reason in _NOT_APPLICABLE_LOCAL.items()},
}

SESSION_INIT = MethodSpec(
    "Session",
    remotior=(
        ("n_processes", 2),
        ("available_ram", 2),
        ("temporary_directory", None),
        ("directory_prefix", None),
        ("log_level", 20),
        ("log_time", True),
        ("progress_callback", None),
        ("multiprocess_module", None),
        ("messages_callback", None),
        ("smtp_server", None),
        ("smtp_user", None),
        ("smtp_password", None),
        ("smtp_recipients", None),
        ("smtp_notification", None),
        ("sound_notification", None),
        ("log_stream_handler", True),
        ("mpi_module", None),
        ("keep_log", None),
    ),
    extensions=(
        ("target", "127.0.0.1:50051"),
        ("channel", None),
        ("credentials", None),
        ("token", None),
        ("session_id", ""),
        ("operation_callback", None),
        ("path_map", None),
    ),
    notes={
        **_SESSION_NOTES,
        "multiprocess_module": Note("not applicable", "the server starts the session's processes"),
        "messages_callback": Note(
            "differs",
            "its warning() and error() receive the client's warnings and tool failures; "
            "the server's own messages are in `log()`",
        ),
        "mpi_module": Note("not applicable", "the server starts the session's processes"),
        "keep_log": Note(
            "not applicable", "the log stays on the server; `close(log_path=...)` keeps a copy"
        ),
    },
)

SESSION_SET = MethodSpec(
    "set",
    remotior=(
        ("n_processes", None),
        ("available_ram", None),
        ("temporary_directory", None),
        ("directory_prefix", None),
        ("log_level", None),
        ("log_time", None),
        ("progress_callback", None),
        ("smtp_server", None),
        ("smtp_user", None),
        ("smtp_password", None),
        ("smtp_recipients", None),
        ("sound_notification", None),
        ("smtp_notification", None),
        ("log_stream_handler", True),
    ),
    notes={
        **_SESSION_NOTES,
        "directory_prefix": Note(
            "not applicable", "the session's temporary directory is made once, when it starts"
        ),
        "log_time": Note(
            "differs", "False is applied too (Remotior changes the log only when True)"
        ),
    },
)

_PER_CALL_RESOURCES = {
    "n_processes": Note(
        "differs", "the session's processes run every tool: set them with `set(n_processes=)`"
    ),
    "available_ram": Note(
        "differs", "the session's RAM budget applies: set it with `set(available_ram=)`"
    ),
}

_BAND_TOOL_NOTES = {
    **_PER_CALL_RESOURCES,
    "input_bands": Note(
        "differs",
        "a path, a list of paths or of (path, band) pairs, a BandSet, or a band set number "
        "of the session's catalog (kept on the server)",
    ),
    "output_path": Note(
        "differs",
        "a directory gets `{prefix}{input name}.tif` per input, as in Remotior; with one "
        "input, a path ending in .tif is that file (Remotior makes a directory of that "
        "name); a list gives each input its path, any other extension than .tif, .tiff "
        "or .vrt becoming .tif; a .vrt path is a virtual output; None is refused "
        "(Remotior writes to its temporary directory)",
    ),
    "overwrite": Note(
        "differs",
        "outputs in a directory are replaced, as Remotior's tool replaces them whatever "
        "`overwrite` says; a list of paths is written over only with overwrite=True "
        "(Remotior raises on an existing path)",
    ),
    "extent_list": Note(
        "differs",
        "each input is clipped to it before the tool runs, on its pixel lines and within "
        "it, as in Remotior; an extent that leaves no pixel of an input is refused",
    ),
    "multiple_resolution": Note(
        "differs",
        "False reads every input onto the first input's pixel size and lines by nearest "
        "neighbour, as Remotior's virtual raster; an input in another CRS than the first "
        "is refused where it would move (Remotior reprojects it)",
    ),
    "bandset_catalog": Note(
        "differs", "band set numbers always name the session's catalog; accepted and not used"
    ),
    "virtual_output": Note(
        "differs",
        "True writes each output as `{name}.vrt` and the GeoTIFF it reads beside it, "
        "`{name}_01.tif`, and returns the .vrt, as Remotior does; rsgrpc's VRT reads one "
        "GeoTIFF where Remotior's reads the parts its processes wrote",
    ),
}

_BAND_TOOL_PARAMETERS_TAIL = (
    ("prefix", ""),
    ("extent_list", None),
    ("multiple_resolution", True),
    ("n_processes", None),
    ("available_ram", None),
    ("bandset_catalog", None),
    ("virtual_output", None),
    ("progress_message", True),
)


def _morphology_spec(name: str) -> MethodSpec:
    return MethodSpec(
        name,
        remotior=(
            ("input_bands", REQUIRED),
            ("value_list", REQUIRED),
            ("size", REQUIRED),
            ("output_path", None),
            ("overwrite", False),
            ("circular_structure", None),
            *_BAND_TOOL_PARAMETERS_TAIL,
        ),
        extensions=(("filter", "value_list"), ("compression", None)),
        notes=_BAND_TOOL_NOTES,
    )


BAND_CALC = MethodSpec(
    "band_calc",
    remotior=(
        ("expression_string", REQUIRED),
        ("output_path", None),
        ("input_raster_list", None),
        ("input_name_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("align_raster", None),
        ("extent_raster", None),
        ("extent_list", None),
        ("extent_intersection", True),
        ("xy_resolution_list", None),
        ("input_nodata_as_value", None),
        ("use_value_as_nodata", None),
        ("output_nodata", None),
        ("output_datatype", None),
        ("use_scale", None),
        ("use_offset", None),
        ("calc_datatype", None),
        ("any_nodata_mask", False),
        ("bandset_catalog", None),
        ("bandset_number", None),
        ("input_bands", None),
        ("point_coordinates", None),
        ("progress_message", True),
        ("device", None),
    ),
    extensions=(("overwrite", True), ("raster_bands", None), ("compression", None)),
    notes={
        **_PER_CALL_RESOURCES,
        "expression_string": Note(
            "differs",
            "several lines run in order as Remotior runs them (# comments, @ name, "
            "@ folder @ name, earlier outputs by their quoted name) in one operation; a "
            "failed or cancelled script keeps no output; band set references (bandset1b2, "
            "bandset#b1, bandset1b*, bandset*b1, bandset{1:3}b1, dates), #BLUE# ... #SWIR2#, "
            "#NDVI# and #EVI#, forbandsets and forbandsinbandset, #BANDSET#, #DATE# and "
            "%n are expanded on the server from the session's catalog (see Band calc); "
            "@ temp @ name is refused",
        ),
        "output_path": Note(
            "differs",
            "a file path (in a script, a path without an extension is a folder); a .vrt "
            "path is a virtual output, `{name}.vrt` and the GeoTIFF `{name}_01.tif` it "
            "reads, as in Remotior; an extension other than .tif/.tiff/.vrt becomes .tif "
            "(an `@ name.vrt` line is virtual too); None is refused "
            "(Remotior writes to its temporary directory); an existing output is replaced, "
            "as in Remotior, unless overwrite=False",
        ),
        "output_nodata": Note(
            "differs",
            "when None, -32768 as in Remotior, except where it does not fit the output type: "
            "255 for Byte, -128 for Int8, 65535 for UInt16, 4294967295 for UInt32 "
            "(Remotior's own constants for those types)",
        ),
        "input_raster_list": Note(
            "differs",
            "inputs may differ in extent and pixel size (see Band calc) but not in CRS: "
            "inputs in different CRSs are refused (Remotior reprojects them on the fly)",
        ),
        "align_raster": Note(
            "differs",
            "the output takes its origin and pixel size, over extent_list or the inputs' "
            "intersection or union (Remotior aligns only with an extent, and with "
            "extent_raster takes that raster's pixel size); xy_resolution_list is then not "
            "used, as in Remotior; it must be in the inputs' CRS",
        ),
        "extent_raster": Note(
            "differs",
            "its bounds are the extent, as extent_list; it must be in the inputs' CRS "
            "(Remotior reprojects the inputs into its CRS)",
        ),
        "xy_resolution_list": Note(
            "differs",
            "also used when the inputs share one grid and no extent is given (Remotior then "
            "ignores it); each output pixel reads the input pixel under its centre, as GDAL "
            "samples, where Remotior's virtual raster rounds an unaligned input's window "
            "to whole pixels",
        ),
        "use_value_as_nodata": Note(
            "differs", "any number, compared in each input's type (Remotior: an integer)"
        ),
        "use_scale": Note(
            "differs",
            "the value written is (result - use_offset) / use_scale in calc_datatype and the "
            "band's scale and offset are set, as in Remotior; nodata pixels stay "
            "output_nodata (Remotior scales them too); into an integer type the value is "
            "rounded as output_datatype says",
        ),
        "use_offset": Note("differs", "as use_scale"),
        "output_datatype": Note(
            "differs",
            "GDAL or NumPy type names; into an integer type a result is rounded to the "
            "nearest integer, halves away from zero, as GDAL writes it; a result outside the "
            "type's range is output_nodata (GDAL clips it to the range)",
        ),
        "calc_datatype": Note(
            "differs",
            "Float32 (the default) or Float64; integer types are refused. In Float32 every "
            "operation's result is rounded to float32 as NumPy's are; functions other than "
            "+ - * / and sqrt, and the aggregations, are computed in float64 and rounded, "
            "so they can differ from NumPy's float32 by one unit in the last place",
        ),
        "any_nodata_mask": Note(
            "differs",
            "True (any input nodata), False (all inputs nodata, the default) and None "
            "(no input rule) as in Remotior, over the inputs the expression reads; in every "
            "mode a pixel is also nodata where NumPy's masked arrays mask the result, or "
            "where it is not finite or does not fit the output type",
        ),
        "bandset_catalog": Note(
            "differs",
            "band set references always read the session's catalog (kept on the server); "
            "accepted and not used",
        ),
        "bandset_number": Note(
            "differs",
            "a band set number of the session's catalog; None is its current band set",
        ),
        "input_bands": Note(
            "differs",
            "a BandSet (of the session's catalog, or made by rs.bandset.create) or a number "
            "of the catalog, whose bands the expression reads as b1, b2, b* and the aliases, "
            "in every line of a script; a BandSet made by rs.bandset.create is sent with the "
            "request, never added to the catalog, and is also the band set of bandset#b1 and "
            "#BANDSET# (bandset_number is then not used, as in Remotior), while bandset2b1 "
            "still reads the catalog (Remotior, given a BandSet, reads no catalog)",
        ),
        "device": Note("not applicable", "the server chooses how it computes (CPU)"),
    },
)

BAND_SIEVE = MethodSpec(
    "band_sieve",
    remotior=(
        ("input_bands", REQUIRED),
        ("size", REQUIRED),
        ("output_path", None),
        ("connected", None),
        ("overwrite", False),
        *_BAND_TOOL_PARAMETERS_TAIL,
    ),
    extensions=(("compression", None),),
    notes=_BAND_TOOL_NOTES,
)

BAND_DILATION = _morphology_spec("band_dilation")
BAND_EROSION = _morphology_spec("band_erosion")

BAND_NEIGHBOR_PIXELS = MethodSpec(
    "band_neighbor_pixels",
    remotior=(
        ("input_bands", REQUIRED),
        ("size", REQUIRED),
        ("output_path", None),
        ("overwrite", False),
        ("stat_name", None),
        ("structure", None),
        ("circular_structure", True),
        ("stat_percentile", None),
        ("output_data_type", None),
        ("virtual_output", None),
        *_BAND_TOOL_PARAMETERS_TAIL[:6],  # prefix ... bandset_catalog
        ("progress_message", True),
    ),
    extensions=(("compression", None),),
    notes={
        **_BAND_TOOL_NOTES,
        "size": Note(
            "differs",
            "the radius of the disk or of the square (2*size+1 wide), from 1 to 256 pixels; "
            "not used with a structure",
        ),
        "stat_name": Note(
            "differs",
            "Count, Max, Mean, Median, Min, Percentile, StandardDeviation or Sum (any case), "
            "each over the window's valid pixels: nodata pixels and pixels outside the raster "
            "take no part, and a nodata pixel stays nodata (Remotior counts the nodata value "
            "as a value, and its Max, Min, Median, Percentile and StandardDeviation give NaN "
            "or other values near the edges); Count, Sum and Mean are exact (Remotior's come "
            "from float32 FFT convolutions rounded to 6 decimals); Median and Percentile "
            "are rank filters as Remotior's (the value at rank n // 2, or int(n * p / 100), "
            "of the n valid values sorted)",
        ),
        "structure": Note(
            "differs",
            "a 0/1 matrix (rows, or a NumPy array) or the path of a structure file under the "
            "data roots: a row a line or bracketed rows, values separated by commas or "
            "spaces, read as numbers (Remotior evaluates each line as Python); odd numbers "
            "of rows and columns; used as it is for every statistic (Remotior flips it for "
            "Count, Mean and Sum)",
        ),
        "stat_percentile": Note(
            "differs",
            "made an integer as in Remotior; required by Percentile, from 0 to 100",
        ),
        "output_data_type": Note(
            "differs",
            "GDAL or NumPy type names; None is each input's type (Remotior takes the first "
            "input's for all); nodata is the input's where the type holds it, else -32768, "
            "255 (Byte), -128 (Int8), 65535 (UInt16), 4294967295 (UInt32) or NaN (floats "
            "without an input nodata); results are rounded to integers halves away from "
            "zero, and those outside the type's range are nodata",
        ),
    },
)

BAND_MASK = MethodSpec(
    "band_mask",
    remotior=(
        ("input_bands", REQUIRED),
        ("input_mask", None),
        ("mask_values", None),
        ("output_path", None),
        ("overwrite", False),
        ("buffer", None),
        ("nodata_value", None),
        ("virtual_output", None),
        ("compress", None),
        ("compress_format", None),
        ("prefix", ""),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("bandset_catalog", None),
        ("progress_message", True),
    ),
    extensions=(("compression", None),),
    notes={
        **{k: v for k, v in _BAND_TOOL_NOTES.items() if k != "multiple_resolution"},
        "input_mask": Note(
            "differs",
            "the path of a mask raster (band 1) or a (path, band) pair, read onto each "
            "input's grid by nearest neighbour, as Remotior's virtual raster; each output "
            "is on its input's grid; a mask in another CRS is refused (Remotior warps it); "
            "a vector mask (.gpkg, .shp, .geojson, ...) is refused until the vector tools "
            "are served",
        ),
        "mask_values": Note(
            "differs",
            "required; compared with the mask's values in the mask's type, as NumPy compares "
            "(a float32 mask's 0.1 is float32's 0.1; Remotior truncates values to integers); "
            "a value the mask's type cannot hold is refused",
        ),
        "buffer": Note(
            "differs",
            "grows the pixels of every listed mask value by a disk of that radius, from 0 "
            "(none) to 512 pixels (Remotior dilates the mask's value 1 whatever mask_values "
            "lists); the disk is band_dilation's circular structure, in pixels of each "
            "input's grid over the mask read onto it, so mask pixels beyond that grid (or "
            "its extent_list) do not grow into it (Remotior dilates the whole mask in its "
            "own pixels first)",
        ),
        "nodata_value": Note(
            "differs",
            "the outputs' nodata; None is each input's own nodata (Remotior takes the first "
            "input's for all), and an input without nodata then needs one; masked pixels, "
            "the input's nodata pixels and pixels where the mask is nodata (also outside a mask "
            "that has nodata) take it; each output keeps its input's data type, with exact "
            "values (Remotior "
            "computes in float32)",
        ),
        "compress": Note(
            "not applicable",
            "outputs are always compressed; choose the codec with `compression`",
        ),
        "compress_format": Note(
            "not applicable",
            "choose the codec with `compression` (deflate, zstd, lzw or none)",
        ),
    },
)

RASTER_RECLASSIFICATION = MethodSpec(
    "raster_reclassification",
    remotior=(
        ("raster_path", REQUIRED),
        ("output_path", None),
        ("overwrite", False),
        ("reclassification_table", None),
        ("csv_path", None),
        ("separator", ","),
        ("output_data_type", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("virtual_output", None),
        ("progress_message", True),
    ),
    extensions=(("compression", None),),
    notes={
        **_PER_CALL_RESOURCES,
        "extent_list": _BAND_TOOL_NOTES["extent_list"],
        "virtual_output": _BAND_TOOL_NOTES["virtual_output"],
        "output_path": Note(
            "differs",
            "the file written, any extension other than .tif, .tiff or .vrt becoming .tif as "
            "in Remotior; None is refused (Remotior writes to its temporary directory)",
        ),
        "reclassification_table": Note(
            "differs",
            "[old, new] rows or a structured array of old_value and new_value: old a number "
            "(pixels equal to it in the input's type; Remotior takes integers only), nan or "
            "null (nodata pixels), or a condition on `raster` such as `raster > 5` or "
            "`(raster >= 2) & (raster < 4)`, parsed with band calc's allow-list, never "
            "evaluated, and true or false (Remotior runs it with exec); new a number kept "
            "exactly (Remotior truncates it to an integer where a condition or a 0 is in the "
            "table) or nan/null for nodata (Remotior's integer fast path keeps the old value). "
            "The last rule that selects a pixel wins, as in Remotior; a valid pixel no rule "
            "selects keeps its value (Remotior's sorted path gives pixels below the largest "
            "old value the next old value's new value); no condition selects a nodata pixel. "
            "A new value that the output type cannot hold, or an old value that the input's "
            "cannot, is refused (INVALID_ARGUMENT) before anything runs",
        ),
        "csv_path": Note(
            "differs",
            "a CSV file under the data roots, one old,new rule a line as in "
            "reclassification_table, split at the line's last separator (so a condition may "
            "hold one); empty lines and a first line old_value,new_value are skipped",
        ),
        "output_data_type": Note(
            "differs",
            "GDAL or NumPy type names; None is the input's, UInt16 and UInt32 becoming Int32 "
            "when a new value is negative as in Remotior (a type given is kept, and a "
            "negative value refused); nodata is the input's where the type holds it, else "
            "-32768, 255 (Byte), -128 (Int8), 65535 (UInt16), 4294967295 (UInt32) or NaN "
            "(floats), none for an input without nodata that needs none; unselected values "
            "are rounded to integers halves away from zero, and those outside the type's "
            "range are nodata (GDAL clamps them in Remotior)",
        ),
    },
)

RASTER_REPORT = MethodSpec(
    "raster_report",
    remotior=(
        ("raster_path", REQUIRED),
        ("output_path", None),
        ("nodata_value", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("progress_message", True),
    ),
    notes={
        **_PER_CALL_RESOURCES,
        "raster_path": Note(
            "differs",
            "band 1 of a raster under the data roots; values are counted exactly in the "
            "band's type (Remotior reads them as float32 and truncates them to integers, so "
            "a float raster's 1.2 and 1.7 are two rows of 1 there and 1.20 and 1.70 here); "
            "more than 262,144 distinct values is refused (RESOURCE_EXHAUSTED), the tool "
            "being meant for classified rasters",
        ),
        "output_path": Note(
            "differs",
            "the CSV file, `.csv` appended to another extension as in Remotior, an existing "
            "file replaced as Remotior replaces it, with Remotior's header and numbers; the "
            "rows are also in the response (`grpc.response.rows`); areas are in the CRS's "
            "unit, and not available (nan) for a geographic CRS as in Remotior or a raster "
            "without CRS (Remotior fails); None is refused (Remotior writes to its temporary "
            "directory)",
        ),
        "extent_list": Note(
            "differs",
            "the raster is clipped to it before it is counted, on its pixel lines and within "
            "it, as in Remotior; an extent that leaves no pixel is refused",
        ),
    },
)

RASTER_ZONAL_STATS = MethodSpec(
    "raster_zonal_stats",
    remotior=(
        ("raster_path", REQUIRED),
        ("reference_path", REQUIRED),
        ("vector_field", None),
        ("output_path", None),
        ("stat_names", None),
        ("stat_percentile", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("progress_message", True),
    ),
    notes={
        **_PER_CALL_RESOURCES,
        "raster_path": Note(
            "differs",
            "band 1 of a raster under the data roots; values are taken in float64 (Remotior "
            "reads them as float32), and a pixel counts only where neither the value nor the "
            "zone is nodata or NaN (Remotior's statistics also take value pixels equal to "
            "the raster's nodata)",
        ),
        "reference_path": Note(
            "differs",
            "a raster of zones under the data roots (or a (path, band) pair), read onto the "
            "value raster's pixel size and lines by nearest neighbour as in Remotior, in the "
            "same CRS (Remotior warps the value raster into the reference's CRS; here another "
            "CRS is refused); zones are exact in the raster's type and written as integers "
            "where they are (Remotior truncates every zone to an integer); a vector is "
            "refused (INVALID_ARGUMENT) until vectors are served",
        ),
        "vector_field": Note(
            "differs",
            "sent with the reference, for a vector reference, which is refused until vectors "
            "are served; not used with a raster, as in Remotior",
        ),
        "output_path": Note(
            "differs",
            "the CSV file, `.csv` appended to another extension (Remotior replaces the "
            "extension), an existing file replaced, with Remotior's header (DN, then a column "
            "per statistic) and numbers; the rows are also in the response "
            "(`grpc.response.rows`); None is refused (Remotior writes to its temporary "
            "directory); `extra` is Remotior's {'table': the rows as NumPy records}",
        ),
        "stat_names": Note(
            "differs",
            "names of `configurations.statistics_list` in any case, looked up, never "
            "evaluated; Sum is the exact sum rounded once (to within 2**-100 for float "
            "values), StandardDeviation merges tiles by Chan's parallel algorithm, Median "
            "and Percentile are exact, from the counts of each distinct value per zone: "
            "more than 131,072 zones and (zone, value) pairs is refused "
            "(RESOURCE_EXHAUSTED); None is refused (Remotior fails)",
        ),
        "stat_percentile": Note(
            "differs",
            "a number or a list of numbers from 0 to 100 (at most 16), NumPy's linear "
            "percentile; a column is named Percentile_12.5 where Remotior writes "
            "Percentile_12 for 12.5",
        ),
        "extent_list": Note(
            "differs",
            "both rasters are clipped to it on the value raster's pixel lines, as in "
            "Remotior; an extent that leaves no pixel is refused",
        ),
    },
)

BAND_COMBINATION = MethodSpec(
    "band_combination",
    remotior=(
        ("input_bands", REQUIRED),
        ("output_path", None),
        ("nodata_value", None),
        ("no_raster_output", False),
        ("overwrite", False),
        ("n_processes", None),
        ("available_ram", None),
        ("bandset_catalog", None),
        ("extent_list", None),
        ("column_name_list", None),
        ("output_table", True),
        ("separator", None),
        ("progress_message", True),
    ),
    notes={
        **_PER_CALL_RESOURCES,
        "input_bands": Note(
            "differs",
            "1 to 16 integer bands of up to 32 bits (a path, a list of paths or of (path, band) "
            "pairs, a BandSet, or a band set number of the session's catalog) on one grid; "
            "float and 64-bit bands are refused, as Remotior's documentation asks for integer "
            "bands (it reads Byte as Int8 and fails on float values); combinations are "
            "coded from 1 in increasing order of their values, the first band's first, "
            "where Remotior orders them by a weighted sum whose weights it tries, at random "
            "after two attempts; more than 65,536 combinations is refused "
            "(RESOURCE_EXHAUSTED)",
        ),
        "output_path": Note(
            "differs",
            "the raster of codes (Int32, nodata 2147483647: Remotior's Int32 codes; its "
            "NumPy builds write Int64), any extension but .tif, .tiff or .vrt becoming .tif; "
            "the table is the CSV file beside it, with the raster's name, and also in the "
            "response (`grpc.response.rows`); None is refused (Remotior writes to its "
            "temporary directory)",
        ),
        "nodata_value": Note(
            "differs",
            "a pixel holding it in any input is nodata, and its combinations are neither "
            "coded nor counted (Remotior gives them codes, so its codes can skip values)",
        ),
        "no_raster_output": Note(
            "differs",
            "True writes only the table; the outcome still lists the raster's path first, "
            "as Remotior's",
        ),
        "overwrite": Note(
            "differs",
            "the raster and its table are replaced only with overwrite=True, and an "
            "existing one is refused (ALREADY_EXISTS) as Remotior raises on an existing path",
        ),
        "bandset_catalog": _BAND_TOOL_NOTES["bandset_catalog"],
        "extent_list": Note(
            "differs",
            "the inputs are clipped to it before they are combined, on their pixel lines and "
            "within it, as in Remotior; an extent that leaves no pixel is refused",
        ),
        "column_name_list": Note(
            "differs",
            "as Remotior (an input without a name has the first 16 characters of its file "
            "name); a name holding the separator or a line break is refused",
        ),
        "output_table": Note(
            "differs",
            "False writes no CSV file and lists only the raster; `extra` holds "
            "`combinations` (fields f0, f1, ... and new_val, the code) and `sums` "
            "(new_val, sum), as Remotior's without its internal `id` field",
        ),
    },
)

CROSS_CLASSIFICATION = MethodSpec(
    "cross_classification",
    remotior=(
        ("classification_path", REQUIRED),
        ("reference_path", REQUIRED),
        ("output_path", None),
        ("overwrite", False),
        ("vector_field", None),
        ("nodata_value", None),
        ("cross_matrix", False),
        ("regression_raster", False),
        ("error_matrix", False),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("progress_message", True),
    ),
    notes={
        **_PER_CALL_RESOURCES,
        "classification_path": Note(
            "differs",
            "an integer band of up to 32 bits under the data roots (or a (path, band) pair); "
            "its grid is the output's, and its valid pixels, reference or not, are the map's "
            "class areas of the error matrix, as in Remotior",
        ),
        "reference_path": Note(
            "differs",
            "an integer raster under the data roots (or a (path, band) pair), read onto the "
            "classification's pixel size and lines in the same CRS (Remotior warps another "
            "CRS; here it is refused); a vector is refused (INVALID_ARGUMENT) until vectors "
            "are served; pairs are coded from 1 in increasing order of the reference value, "
            "then of the classification value (Remotior orders them by a weighted sum)",
        ),
        "output_path": Note(
            "differs",
            "the raster of pair codes (Int32, nodata 2147483647), any extension but .tif, "
            ".tiff or .vrt becoming .tif; the CSV file is beside it with the raster's name, "
            "also in the response (`grpc.response`: rows, error_matrix, regression); None is "
            "refused (Remotior writes to its temporary directory)",
        ),
        "overwrite": Note(
            "differs",
            "the raster and its table are replaced only with overwrite=True; an existing one "
            "is refused (ALREADY_EXISTS)",
        ),
        "vector_field": Note(
            "differs",
            "sent with the reference, for a vector reference, which is refused until vectors "
            "are served; not used with a raster, as in Remotior",
        ),
        "nodata_value": Note(
            "differs",
            "a pixel holding it in either raster is nodata, and the map's class areas leave "
            "it out too (Remotior leaves it in them)",
        ),
        "cross_matrix": Note(
            "differs",
            "the cross matrix, and with error_matrix also the error matrix (Remotior writes "
            "only the cross matrix when both are asked for)",
        ),
        "regression_raster": Note(
            "differs",
            "the regression's statistics are in the CSV file and `grpc.response.regression`; "
            "the two rasters of constant B0 and B1 that Remotior writes are not written "
            "(`extra` regression_raster_b0 and _b1 are None)",
        ),
        "error_matrix": Note(
            "differs",
            "Remotior's error matrix and area-based matrix (Olofsson et al. 2014), with the "
            "standard errors of user's, producer's and overall accuracy added; a variance "
            "needing a stratum of one pixel is NaN (Remotior drops it); a map class without "
            "reference pixels is left out of the estimates and its share reported (Remotior "
            "leaves its area out of the total); kappa of the pixel counts is in the response "
            "beside Remotior's kappa of the area proportions; more than 1,024 classes is "
            "refused",
        ),
        "extent_list": Note(
            "differs",
            "both rasters are clipped to it on the classification's pixel lines, as in "
            "Remotior; an extent that leaves no pixel is refused",
        ),
    },
)

BAND_SPECTRAL_DISTANCE = MethodSpec(
    "band_spectral_distance",
    remotior=(
        ("input_bandsets", REQUIRED),
        ("output_path", None),
        ("algorithm_name", None),
        ("nodata_value", None),
        ("threshold", None),
        ("n_processes", None),
        ("available_ram", None),
        ("virtual_output", False),
        ("overwrite", False),
        ("bandset_catalog", None),
        ("progress_message", True),
    ),
    extensions=(("compression", None),),
    notes={
        **_PER_CALL_RESOURCES,
        "input_bandsets": Note(
            "differs",
            "two band sets, each a BandSet or a band set number of the session's catalog "
            "(kept on the server), or a list of paths or (path, band) pairs; at most 32 "
            "bands each; sets of different sizes, or bands on different grids, are refused "
            "(Remotior stacks them in one virtual raster)",
        ),
        "output_path": Note(
            "differs",
            "the output file, any extension but .tif, .tiff or .vrt becoming .tif; None is "
            "refused (Remotior writes to its temporary directory)",
        ),
        "algorithm_name": Note(
            "differs",
            "'md' or 'minimum distance' (Euclidean), 'sam' or 'spectral angle mapping' "
            "(degrees), any case, as in Remotior; computed in float64 (Remotior in float32), "
            "the cosine clipped to [-1, 1]; an angle with a spectrum of zeros is nodata "
            "(Remotior writes NaN)",
        ),
        "threshold": Note(
            "differs",
            "the output is 1 where the distance is above it and 0 elsewhere, as Remotior's; "
            "where the distance is undefined it stays nodata (Remotior writes 0)",
        ),
        "bandset_catalog": Note(
            "differs", "band set numbers always name the session's catalog; accepted and not used"
        ),
        "virtual_output": Note(
            "differs",
            "True writes `{name}.vrt` and the GeoTIFF it reads beside it, as band calc does",
        ),
    },
)

BAND_PCA = MethodSpec(
    "band_pca",
    remotior=(
        ("input_bands", REQUIRED),
        ("normalize", False),
        ("output_path", None),
        ("overwrite", False),
        ("nodata_value", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("bandset_catalog", None),
        ("number_components", None),
        ("progress_message", True),
    ),
    notes={
        **_PER_CALL_RESOURCES,
        "input_bands": Note(
            "differs",
            "1 to 64 bands (a path, a list of paths or of (path, band) pairs, a BandSet, or a "
            "band set number of the session's catalog) on one grid; the statistics are "
            "accumulated in float64 over the pixels valid in every band in one pass (tile "
            "means and co-moments merged exactly), where Remotior makes two passes and "
            "divides by the largest band's count",
        ),
        "normalize": Note(
            "differs",
            "True decomposes the correlation matrix and projects the standardized bands "
            "((x - mean) / std); Remotior's normalize subtracts the means twice and mixes "
            "population and sample variances, and its rasters project unscaled bands",
        ),
        "output_path": Note(
            "differs",
            "names the components, `{stem}_pc{n}.tif` (or .vrt) beside it, and the table "
            "`{stem}.csv`, as Remotior; float32, nodata -32768 as Remotior's; None is refused "
            "(Remotior writes to its temporary directory)",
        ),
        "overwrite": Note(
            "differs",
            "the components and the table are replaced only with overwrite=True, and an "
            "existing one is refused (ALREADY_EXISTS)",
        ),
        "nodata_value": Note(
            "differs",
            "a pixel holding it in any band is nodata, besides each band's own nodata "
            "(Remotior's replaces the bands' nodata)",
        ),
        "bandset_catalog": _BAND_TOOL_NOTES["bandset_catalog"],
        "extent_list": Note(
            "differs",
            "the bands are clipped to it on their pixel lines, as in Remotior; an extent that "
            "leaves no pixel is refused",
        ),
        "number_components": Note(
            "differs",
            "None or -1 writes a raster per band, more than the bands is the bands, as "
            "Remotior's None; 0 and other negative values are refused (Remotior writes "
            "nothing and fails); the table and the response list every component, where "
            "Remotior's lists one more than asked and zeros after",
        ),
    },
)

RASTER_LABEL = MethodSpec(
    "raster_label",
    remotior=(
        ("raster_path", REQUIRED),
        ("output_path", None),
        ("overwrite", False),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("virtual_output", None),
        ("progress_message", True),
    ),
    extensions=(("connectivity", 4), ("pixel_count", True), ("compression", None)),
    notes={
        "n_processes": Note(
            "differs",
            "the session's processes label the tiles (Remotior always uses one): set them "
            "with `set(n_processes=)`",
        ),
        "available_ram": _PER_CALL_RESOURCES["available_ram"],
        "extent_list": _BAND_TOOL_NOTES["extent_list"],
        "virtual_output": _BAND_TOOL_NOTES["virtual_output"],
        "raster_path": Note(
            "differs",
            "band 1 of a raster under the data roots, of any integer or float type; a patch "
            "is a set of non-zero pixels joined through their 4 neighbours, whatever their "
            "values, as in Remotior (rsgrpc's keyword connectivity=8 joins diagonals too); "
            "0, NaN and nodata pixels are background",
        ),
        "output_path": Note(
            "differs",
            "the UInt32 file written, nodata 0 (background and nodata) as in Remotior, any "
            "extension other than .tif, .tiff or .vrt becoming .tif; each patch's pixels hold "
            "the patch's pixel count, as in Remotior; rsgrpc's keyword pixel_count=False "
            "writes labels instead, 1, 2, ... in raster order of the patch's first pixel "
            "(scipy.ndimage.label's numbering, whatever the tiling); None is refused "
            "(Remotior writes to its temporary directory)",
        ),
    },
)

BAND_CLUSTERING = MethodSpec(
    "band_clustering",
    remotior=(
        ("input_bands", REQUIRED),
        ("output_raster_path", REQUIRED),
        ("algorithm_name", REQUIRED),
        ("class_number", REQUIRED),
        ("seed_signatures", None),
        ("threshold", None),
        ("max_iter", None),
        ("overwrite", False),
        ("nodata_value", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("bandset_catalog", None),
        ("progress_message", True),
    ),
    extensions=(("seed", 0), ("min_class_size", None), ("max_standard_deviation", None)),
    notes={
        **_PER_CALL_RESOURCES,
        "input_bands": Note(
            "differs",
            "1 to 64 bands (a path, a list of paths or of (path, band) pairs, a BandSet, or a "
            "band set number of the session's catalog) on one grid; a pixel is clustered "
            "where it is valid in every band",
        ),
        "output_raster_path": Note(
            "differs",
            "the raster of classes (UInt32, nodata 4294967295, as Remotior's "
            "classification), any extension but .tif, .tiff or .vrt becoming .tif; the "
            "centres are the CSV file beside it (`extra['signature_path']`, Remotior's "
            ".scpx) and in the response",
        ),
        "algorithm_name": Note(
            "differs",
            "k-means with 'minimum distance' ('md') or 'spectral angle mapping' ('sam'), "
            "or 'isodata': ISODATA by minimum distance, as the Semi-Automatic "
            "Classification Plugin defines it (Remotior has none), with rsgrpc's keywords "
            "min_class_size (10) and max_standard_deviation (0); any other name is refused, "
            "where Remotior falls back to minimum distance; ties go to the lower class",
        ),
        "class_number": Note(
            "differs",
            "1 to 1024 clusters (ISODATA: 1 to 512, the number it aims at), numbered from 1 "
            "in the raster whatever the seeding (Remotior numbers 'band mean' clusters "
            "from 0)",
        ),
        "seed_signatures": Note(
            "differs",
            "'band mean' (the default: seeds spread over each band's range, over the pixels "
            "valid in every band), 'random pixel' (the values of pixels drawn from `seed` by "
            "their place in the grid, so the same for any tiling; Remotior draws points "
            "unseeded) or the seeds as a list of value lists; a SpectralSignaturesCatalog or "
            ".scpx path is refused",
        ),
        "threshold": Note(
            "differs",
            "iterations stop once no centre moves farther than it (Euclidean distance, or "
            "spectral angle in degrees; with ISODATA, and no cluster is dropped, split or "
            "merged); Remotior stops when the largest distance between two "
            "new centres exceeds it, which does not measure convergence",
        ),
        "max_iter": Note(
            "differs",
            "the most iterations, each moving the centres to their clusters' means "
            "(scikit-learn's max_iter; default 10; ISODATA's also drop, merge or split "
            "clusters); the raster is classed by the final "
            "centres and iterations stop early once no centre moves; Remotior classes with "
            "max_iter sets of centres, one update fewer; below 1 is refused",
        ),
        "nodata_value": Note(
            "differs",
            "a pixel holding it in any band is nodata, besides each band's own nodata "
            "(Remotior's replaces the bands' nodata)",
        ),
        "bandset_catalog": Note(
            "differs", "band set numbers always name the session's catalog; accepted and not used"
        ),
    },
)

SIGNATURES: dict[str, MethodSpec] = {
    "__init__": SESSION_INIT,
    "set": SESSION_SET,
    "band_calc": BAND_CALC,
    "band_sieve": BAND_SIEVE,
    "band_dilation": BAND_DILATION,
    "band_erosion": BAND_EROSION,
    "band_neighbor_pixels": BAND_NEIGHBOR_PIXELS,
    "raster_reclassification": RASTER_RECLASSIFICATION,
    "band_mask": BAND_MASK,
    "raster_report": RASTER_REPORT,
    "raster_zonal_stats": RASTER_ZONAL_STATS,
    "band_combination": BAND_COMBINATION,
    "cross_classification": CROSS_CLASSIFICATION,
    "band_clustering": BAND_CLUSTERING,
    "band_pca": BAND_PCA,
    "band_spectral_distance": BAND_SPECTRAL_DISTANCE,
    "raster_label": RASTER_LABEL,
}

# Remotior's `Session` attributes other than the methods above, and what the client has.
SESSION_ATTRIBUTES: dict[str, Note | None] = {
    "configurations": Note(
        "differs",
        "the fields scripts read (n_processes, available_ram, temp.dir, "
        "temporary_directory, log_level, ...), from the server's session",
    ),
    "output_manager": None,
    "close": None,
    "bandset_catalog": Note(
        "differs",
        "the session's catalog, kept on the server (also usable from other languages as "
        "BandSetService); rs.bandset_catalog() returns it rather than a new catalog",
    ),
    "bandset": Note(
        "differs",
        "the BandSet class: rs.bandset.create(...) makes a band set outside the catalog, "
        "built and checked by the server (files, grid, sensor wavelengths, order) and kept "
        "by the client, with the catalog's band sets' attributes; band tools read its "
        "bands; band calc sends it in its request, never adding it to the session's "
        "catalog; catalog.add_bandset(bs) copies it in; box_coordinate_list is kept "
        "with the band set (on the server for the catalog's) and band tools given the "
        "band set clip its bands to it in the place of their extent_list, as in Remotior "
        "(band calc does not, as in Remotior); spectral_range_bands, reset and XML "
        "export are not served",
    ),
    **{
        name: Note("not yet", "not planned in an open issue")
        for name in (
            "spectral_signatures_catalog",
            "spectral_signatures_plot_catalog",
            "spectral_signatures_plot",
            "table_manager",
            "dates_times",
            "download_tools",
            "shared_tools",
            "files_directories",
            "band_classification",
            "band_super_resolution",
            "classifier",
            "mosaic",
            "band_clip",
            "band_resample",
            "band_stack",
            "download_products",
            "preprocess_products",
            "raster_edit",
            "raster_split",
            "raster_to_vector",
            "vector_to_raster",
            "jupyter",
        )
    },
}


_LABELS = {
    None: "supported",
    "differs": "supported, with a difference",
    "not applicable": "accepted, not applicable",
    "not yet": "not yet",
}


def compatibility_rows() -> list[tuple[str, str, str]]:
    """(where, status, reason) for every Remotior parameter and Session attribute."""
    rows = []
    for key, spec in SIGNATURES.items():
        where = "Session(...)" if key == "__init__" else f"{spec.name}(...)"
        for name, _ in spec.remotior:
            note = spec.notes.get(name)
            rows.append(
                (f"{where} `{name}`", _LABELS[note and note.status], note.reason if note else "")
            )
    for name, note in SESSION_ATTRIBUTES.items():
        rows.append((f"Session.{name}", _LABELS[note and note.status], note.reason if note else ""))
    return rows


def compatibility_table() -> str:
    """The rows of `compatibility_rows` as a Markdown table."""
    lines = ["| Remotior | rsgrpc | Note |", "| --- | --- | --- |"]
    lines += [
        f"| {where} | {status} | {reason} |" for where, status, reason in compatibility_rows()
    ]
    return "\n".join(lines)
